"""Input checks that keep clients from running code through PHOEBE.

PHOEBE evaluates constraint expressions with Python's ``eval``
(``ConstraintParameter.get_result`` in ``phoebe/parameters/parameters.py``, twice: once
on the expression with ``{twig}`` placeholders replaced by ``repr``-ish values, once on
the "safe label" form with the values as globals *and the builtins available*).  String
values of parameters referenced by a constraint are pasted into that text between
single quotes.  ``CodeParameter`` runs ``exec``; compute/solver ``detach``/``use_server``
write scripts and start processes; a few options name files.

This module holds the pure, PHOEBE-free part of the defence, used by
:mod:`phoebe_kernel_worker.commands` before anything reaches PHOEBE:

* :func:`validate_expression` / :func:`analyze_expression`: an AST allow-list for
  constraint expressions (numbers, placeholders, arithmetic, comparisons and calls of
  PHOEBE's constraint math functions; nothing else);
* per-command keyword checks (:func:`check_filter_kwargs`, :func:`check_kwargs`,
  :func:`check_plain_value`, :func:`check_label`, :func:`check_uniqueid`);
* :data:`DATASET_KINDS` and the deny lists.

The bundle-JSON checks for ``load_bundle`` live in
:mod:`phoebe_kernel_worker.bundle_safety`; the run-time guards patched into PHOEBE
classes (the last line of defence at the ``eval``/``exec`` sites) live in
:mod:`phoebe_kernel_worker.guards`.
"""

from __future__ import annotations

import ast
import functools
import keyword
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput

__all__ = [
    "ALLOWED_CONSTANT_NAMES",
    "ALLOWED_FUNCTIONS",
    "DATASET_KINDS",
    "DENIED_KWARGS",
    "FILTER_FLAGS",
    "FILTER_TAGS",
    "PHOEBE_ACTED_ON_KWARGS",
    "ExpressionInfo",
    "UnsafeInput",
    "analyze_expression",
    "check_filter_kwargs",
    "check_kwargs",
    "check_label",
    "check_plain_value",
    "check_safe_labels",
    "check_uniqueid",
    "is_quote_safe",
    "safe_label",
    "safe_label_form",
    "validate_expression",
]

#: Functions a constraint expression may call.  The public functions of
#: ``phoebe.constraints.builtin`` that PHOEBE's built-in constraints use, PHOEBE's own
#: ``_constraint_math_funcs`` and a few plain math functions.  Deliberately absent:
#: ``distl_from_json`` (builds distributions from JSON, which can import modules),
#: ``newton``/``bisect`` (take callables) and the private ``_delta_t_*`` helpers.
ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    {
        # phoebe.constraints.builtin
        "ecosw2ecc",
        "ecosw2per0",
        "esinw2ecc",
        "esinw2per0",
        "fillout_factor_to_pot",
        "phases_to_times",
        "pot_to_fillout_factor",
        "pot_to_requiv_contact",
        "potential_contact_L1",
        "potential_contact_L23",
        "requiv_L1",
        "requiv_contact_L1",
        "requiv_contact_L23",
        "requiv_to_pot_contact",
        "t0_perpass_to_supconj",
        "t0_ref_to_supconj",
        "t0_supconj_to_perpass",
        "t0_supconj_to_ref",
        "times_to_phases",
        # PHOEBE's _constraint_math_funcs (numpy versions)
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "arctan2",
        "sqrt",
        "log10",
        # plain math
        "log",
        "exp",
        "abs",
    }
)

#: Bare names (not calls) an expression may use besides its placeholders.
ALLOWED_CONSTANT_NAMES: frozenset[str] = frozenset({"pi", "e"})

#: The real dataset kinds; ``add_dataset(kind=...)`` is resolved by PHOEBE with
#: ``getattr`` on ``phoebe.parameters.dataset``, so nothing else may pass.
DATASET_KINDS: frozenset[str] = frozenset({"lc", "rv", "lp", "orb", "mesh"})

#: The tags that label every PHOEBE parameter (a parameter dict's "meta" keys).
META_TAGS: tuple[str, ...] = (
    "qualifier",
    "feature",
    "component",
    "dataset",
    "constraint",
    "distribution",
    "compute",
    "model",
    "solver",
    "solution",
    "figure",
    "kind",
    "context",
)

#: Filter tags accepted wherever PHOEBE filters parameters (get_value, set_value, ...).
#: ``server`` is left out on purpose: the worker has no server context.
FILTER_TAGS: frozenset[str] = frozenset({"twig", "uniqueid", "time", *META_TAGS})

#: Boolean switches of PHOEBE's filter calls.
FILTER_FLAGS: frozenset[str] = frozenset(
    {"check_visible", "check_default", "check_advanced", "check_single"}
)

#: Names PHOEBE itself acts on when they reach a filter call (its filter matches on them,
#: or ``get_value``/``set_value`` hand them on to the Parameter, which reads them) and
#: which this service does not accept.  A filter-taking command refuses them unless it
#: lists them as its own arguments; every other unknown name is ignored, as PHOEBE's
#: filter ignores it (see :func:`check_filter_kwargs`).
_ACTED_ON_NAMES = (
    "server uniquetwig constraint_func value autocomplete force_ps force run_checks "
    "run_constraints from_constraint from_flip_bundle_constraint skip_update_choices "
    "bundle parent_ps return_quantity required_shape allow_value_as_first_arg timederiv "
    "index unit t default expand"
)
PHOEBE_ACTED_ON_KWARGS: frozenset[str] = frozenset(_ACTED_ON_NAMES.split())

#: Keyword arguments refused by every command, with the reason given to the client.
DENIED_KWARGS: Mapping[str, str] = {
    "detach": "detached jobs start processes and write scripts",
    "use_server": "remote/threaded servers start processes",
    "server": "remote/threaded servers start processes",
    "sleep": "only used by detached jobs",
    "jobid": "names script files of detached jobs",
    "out_fname": "writes files",
    "fname": "writes files",
    "filename": "reads or writes files",
    "script_fname": "writes files",
    "save": "writes files",
    "export": "writes files",
    "custom_lnprobability_callable": "is code",
    "continue_from_ps": "internal to PHOEBE",
    "ignore_readonly": "readonly parameters stay readonly",
    "allow_not_in_choices": "choice parameters only take their choices",
    "check_label": "labels are always checked",
    "return_changes": "not supported by this service",
}

MAX_EXPRESSION_LENGTH = 4000
MAX_EXPRESSION_NODES = 1000
MAX_EXPRESSION_DEPTH = 60
MAX_INT_CONSTANT = 10**18
MAX_CONSTANT_EXPONENT = 1000.0
MAX_CONSTANT_BASE = 1.0e6
MAX_STRING_LENGTH = 100_000
MAX_LIST_LENGTH = 10_000_000
MAX_VALUE_DEPTH = 4

_PLACEHOLDER_RE = re.compile(r"\{.[^{}]*\}")  # the pattern ConstraintParameter._parse_expr uses
_TWIG_RE = re.compile(r"[A-Za-z0-9_@,]{1,256}")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")
_KWARG_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_UNIQUEID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAG_VALUE_RE = re.compile(r"[A-Za-z0-9_@,*?\-]{0,256}")
_TWIG_FILTER_RE = re.compile(r"[A-Za-z0-9_@,.*?\-\[\]]{0,1024}")
_TIME_TAG_RE = re.compile(r"[0-9eE+\-.]{1,40}")
_PRINTABLE_ASCII_RE = re.compile(r"[ -~]*")
_PLACEHOLDER_PREFIX = "_phoebe_var_"

_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_UNARY_OPS = (ast.UAdd, ast.USub)
_COMPARE_OPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


@dataclass(frozen=True)
class ExpressionInfo:
    """What :func:`analyze_expression` learnt about an accepted expression.

    ``twigs`` are the placeholder twigs in order of appearance (or, for the safe-label
    form, the variable names used); ``call_argument_twigs`` those that appear directly
    as an argument of a function call; ``other_twigs`` those that appear anywhere else
    (inside arithmetic, comparisons or on their own); ``has_calls`` whether the
    expression calls any function (PHOEBE then pastes values into the text and
    evaluates that, so array and string values must only be call arguments).
    """

    twigs: tuple[str, ...]
    call_argument_twigs: frozenset[str]
    other_twigs: frozenset[str]
    has_calls: bool


def validate_expression(expr: str) -> None:
    """Raise :class:`UnsafeInput` unless ``expr`` is a harmless constraint expression.

    ``expr`` uses PHOEBE's ``{twig}`` placeholders (``{sma@binary} * sin({incl@binary})``).
    Called by ``set_value`` on a ConstraintParameter, by the bundle-JSON checks and by the
    run-time guard right before PHOEBE evaluates a constraint.
    """
    analyze_expression(expr)


def analyze_expression(expr: str, variable_names: frozenset[str] | None = None) -> ExpressionInfo:
    """Check ``expr`` against the AST allow-list and say where its placeholders sit.

    With ``variable_names`` the expression is taken in PHOEBE's internal "safe label"
    form: no ``{...}`` placeholders, and the given bare names stand for the variables.
    Raises :class:`UnsafeInput` for anything outside the allow-list; results are cached.
    """
    if not isinstance(expr, str):
        raise UnsafeInput(f"constraint expression must be a string, not {type(expr).__name__}")
    return _analyze_cached(expr, variable_names)


@functools.lru_cache(maxsize=4096)
def _analyze_cached(expr: str, variable_names: frozenset[str] | None) -> ExpressionInfo:
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise UnsafeInput(f"constraint expression longer than {MAX_EXPRESSION_LENGTH} characters")
    if not _PRINTABLE_ASCII_RE.fullmatch(expr):
        raise UnsafeInput("constraint expression may only contain printable ASCII characters")
    if _PLACEHOLDER_PREFIX in expr:
        raise UnsafeInput(f"constraint expression may not contain {_PLACEHOLDER_PREFIX!r}")

    names: dict[str, str] = {}
    if variable_names is None:

        def _replace(match: re.Match[str]) -> str:
            twig = match.group(0)[1:-1]
            if not _TWIG_RE.fullmatch(twig):
                raise UnsafeInput(f"invalid twig {twig!r} in constraint expression")
            name = f"{_PLACEHOLDER_PREFIX}{len(names)}"
            names[name] = twig
            return name

        source = _PLACEHOLDER_RE.sub(_replace, expr)
    else:
        source = expr
        names = {name: name for name in variable_names}
    if "{" in source or "}" in source:
        raise UnsafeInput("unbalanced or nested '{' '}' in constraint expression")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeInput(f"constraint expression is not valid: {exc.__class__.__name__}") from None
    checker = _ExpressionChecker(names)
    checker.check(tree.body, depth=0)
    return ExpressionInfo(
        twigs=tuple(checker.order),
        call_argument_twigs=frozenset(checker.call_args),
        other_twigs=frozenset(checker.others),
        has_calls=checker.has_calls,
    )


class _ExpressionChecker:
    """Walks an expression AST, refusing every node type not explicitly allowed."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names
        self.order: list[str] = []
        self.call_args: set[str] = set()
        self.others: set[str] = set()
        self.has_calls = False
        self.count = 0

    def check(self, node: ast.AST, depth: int, as_call_arg: bool = False) -> None:
        self.count += 1
        if self.count > MAX_EXPRESSION_NODES:
            raise UnsafeInput("constraint expression is too large")
        if depth > MAX_EXPRESSION_DEPTH:
            raise UnsafeInput("constraint expression is nested too deeply")
        if isinstance(node, ast.Constant):
            self._check_constant(node)
        elif isinstance(node, ast.Name):
            self._check_name(node, as_call_arg)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _BIN_OPS):
            if isinstance(node.op, ast.Pow):
                self._check_power(node)
            self.check(node.left, depth + 1)
            self.check(node.right, depth + 1)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY_OPS):
            self.check(node.operand, depth + 1)
        elif isinstance(node, ast.Compare) and all(isinstance(o, _COMPARE_OPS) for o in node.ops):
            self.check(node.left, depth + 1)
            for comparator in node.comparators:
                self.check(comparator, depth + 1)
        elif isinstance(node, ast.Call):
            self._check_call(node, depth)
        else:
            raise UnsafeInput(
                f"constraint expression may not contain {type(node).__name__} "
                "(only numbers, {twig} placeholders, arithmetic, comparisons and calls of "
                "PHOEBE's constraint functions are allowed)"
            )

    def _check_constant(self, node: ast.Constant) -> None:
        value = node.value
        if type(value) is float:
            return
        if type(value) is int and abs(value) <= MAX_INT_CONSTANT:
            return
        raise UnsafeInput(f"constraint expression may not contain the constant {value!r}")

    def _check_name(self, node: ast.Name, as_call_arg: bool) -> None:
        if not isinstance(node.ctx, ast.Load):
            raise UnsafeInput("constraint expression may not assign")
        if node.id in self.names:
            twig = self.names[node.id]
            self.order.append(twig)
            (self.call_args if as_call_arg else self.others).add(twig)
        elif node.id not in ALLOWED_CONSTANT_NAMES:
            raise UnsafeInput(f"constraint expression may not use the name {node.id!r}")

    def _check_call(self, node: ast.Call, depth: int) -> None:
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in ALLOWED_FUNCTIONS:
            shown = func.id if isinstance(func, ast.Name) else type(func).__name__
            raise UnsafeInput(f"constraint expression may not call {shown!r}")
        if func.id in self.names:
            raise UnsafeInput(f"constraint variable {func.id!r} cannot be called")
        if node.keywords:
            raise UnsafeInput("constraint expression may not use keyword arguments")
        self.has_calls = True
        self.count += 1
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise UnsafeInput("constraint expression may not use *arguments")
            self.check(arg, depth + 1, as_call_arg=True)

    def _check_power(self, node: ast.BinOp) -> None:
        """Refuse powers that could keep Python busy for minutes (huge integer powers).

        Placeholder values are floats, so only integer constants (and calls on them)
        can build big integers; PHOEBE's own expressions only use a float exponent on
        a base that already contains a power.
        """
        if _contains_power(node.right):
            raise UnsafeInput("constraint expression may not nest powers in an exponent")
        if not _has_float_operand(node.right):
            if not _is_constant_only(node.right):
                raise UnsafeInput("an integer exponent must be a plain number")
            exponent = _constant_value(node.right)
            if not math.isfinite(exponent) or abs(exponent) > MAX_CONSTANT_EXPONENT:
                raise UnsafeInput("constraint expression uses too large an exponent")
            if _contains_power(node.left):
                raise UnsafeInput("a power of a power needs a float exponent (e.g. 2.0)")
        if _is_constant_only(node.left):
            base = _constant_value(node.left)
            if not math.isfinite(base) or abs(base) > MAX_CONSTANT_BASE:
                raise UnsafeInput("constraint expression raises too large a constant")


def _contains_power(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node))


def _has_float_operand(node: ast.AST) -> bool:
    """Whether a float (float constant, placeholder, ``pi``/``e``) takes part in ``node``."""
    called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and type(n.value) is float:
            return True
        if isinstance(n, ast.Name) and id(n) not in called:
            return True
    return False


def _is_constant_only(node: ast.AST) -> bool:
    """Whether ``node`` is made of numeric constants and arithmetic only."""
    return all(
        isinstance(n, ast.Constant | ast.BinOp | ast.UnaryOp | ast.operator | ast.unaryop)
        for n in ast.walk(node)
    )


def _constant_value(node: ast.AST) -> float:
    """Evaluate a constant-only subtree (no powers) with floats; inf/nan on failure."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return math.inf
    if isinstance(node, ast.UnaryOp):
        value = _constant_value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _constant_value(node.left), _constant_value(node.right)
        try:
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
                return left / right
        except (ZeroDivisionError, OverflowError):
            return math.inf
    return math.inf


# ------------------------------------------------------------------------ safe labels


def safe_label(uniqueid: str) -> str:
    """The name PHOEBE gives a constraint variable in the evaluated expression.

    ``ConstraintVar`` keeps only the letters of the parameter's uniqueid
    (``''.join(c for c in uniqueid if c.isalpha())``, ``phoebe/constraints/expression.py``)
    and ``ConstraintParameter._parse_expr`` pastes that name in place of ``{twig}``.
    """
    return "".join(char for char in uniqueid if char.isalpha())


#: Names a safe label may not be: Python keywords and constants, and the functions and
#: constants an expression may use (a variable of that name would shadow or be shadowed).
_RESERVED_LABELS = frozenset(keyword.kwlist) | ALLOWED_FUNCTIONS | ALLOWED_CONSTANT_NAMES


def check_safe_labels(labels: Mapping[str, str]) -> None:
    """Refuse constraint variables whose safe labels PHOEBE would evaluate wrongly.

    ``labels`` maps each variable's uniqueid to its safe label.  Refused: an empty label
    (a uniqueid without letters), a reserved name (keyword, allowed function or
    constant), and two uniqueids with the same label (PHOEBE's ``eval`` globals would
    hold one value for both).  Called by the ``set_value`` check of a new expression and
    by the run-time guard before PHOEBE evaluates a constraint.
    """
    seen: dict[str, str] = {}
    for uniqueid, label in labels.items():
        if not label or not label.isascii() or not label.isidentifier():
            raise UnsafeInput(
                f"constraint variable with uniqueid {uniqueid!r}: PHOEBE names variables by "
                "the letters of their uniqueid, and this one has none (or non-ASCII ones)"
            )
        if label in _RESERVED_LABELS:
            raise UnsafeInput(
                f"constraint variable with uniqueid {uniqueid!r} would be named {label!r} in "
                "PHOEBE's expression, which is a reserved name"
            )
        other = seen.setdefault(label, uniqueid)
        if other != uniqueid:
            raise UnsafeInput(
                f"constraint variables with uniqueids {other!r} and {uniqueid!r} would both be "
                f"named {label!r} in PHOEBE's expression (it keeps only the letters)"
            )


def safe_label_form(expr: str, labels: Mapping[str, str]) -> str:
    """``expr`` with each ``{twig}`` replaced by its safe label, as PHOEBE does it.

    ``labels`` maps twigs to safe labels; PHOEBE replaces placeholders one after the
    other with ``str.replace`` (``ConstraintParameter._parse_expr``).
    """
    for placeholder in _PLACEHOLDER_RE.findall(expr):
        expr = expr.replace(placeholder, labels[placeholder[1:-1]])
    return expr


# --------------------------------------------------------------------------- kwargs


def is_quote_safe(text: str) -> bool:
    """Whether ``text`` can be pasted between single quotes in Python source harmlessly.

    PHOEBE pastes string values of constraint variables as ``'{}'.format(value)``; a
    quote, a backslash or a control character could end or bend that literal.
    """
    return (
        isinstance(text, str)
        and len(text) <= 1024
        and _PRINTABLE_ASCII_RE.fullmatch(text) is not None
        and "'" not in text
        and "\\" not in text
    )


def check_label(value: Any, what: str) -> str:
    """Check a new label (dataset, model, solution): PHOEBE's label rule, bounded length."""
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value):
        raise CommandError(
            f"{what} must be 1-64 letters, digits or '_' and start with a letter or digit"
        )
    return value


def check_uniqueid(value: Any) -> str:
    """Check a client-chosen uniqueid: a string of at most 64 ``[A-Za-z0-9_-]``."""
    if not isinstance(value, str) or not _UNIQUEID_RE.fullmatch(value):
        raise CommandError("uniqueid must be a string of 1-64 characters from [A-Za-z0-9_-]")
    return value


def check_kwargs(command: str, kwargs: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse keyword arguments of ``command`` that are denied or not in ``allowed``."""
    allowed_set = set(allowed)
    for key in kwargs:
        if not isinstance(key, str):
            raise CommandError(f"{command}: argument names must be strings")
        if key in DENIED_KWARGS and key not in allowed_set:
            raise UnsafeInput(f"{command}: argument {key!r} is not allowed ({DENIED_KWARGS[key]})")
        if key not in allowed_set:
            raise CommandError(
                f"{command}: unknown argument {key!r} (accepted: {', '.join(sorted(allowed_set))})"
            )


def check_filter_kwargs(
    command: str, kwargs: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Check PHOEBE filter arguments; return the ones to hand to PHOEBE.

    Tags hold strings (or lists of them), flags bools.  ``extra`` maps further accepted
    argument names to a checker callable (or ``None`` to accept any plain JSON value).
    Names in :data:`DENIED_KWARGS` and :data:`PHOEBE_ACTED_ON_KWARGS` (unless in
    ``extra``) are refused.  Any other name is tolerated the way PHOEBE's filter
    tolerates it: PHOEBE ignores keyword arguments that are not tags, so clients such
    as PHOEBE Lab send widget options (``options=[...]``) along; such names are dropped
    here, unread, and never reach PHOEBE.
    """
    extra = dict(extra or {})
    accepted = FILTER_TAGS | FILTER_FLAGS | set(extra)
    refused = set(DENIED_KWARGS) | PHOEBE_ACTED_ON_KWARGS
    kept: dict[str, Any] = {}
    for key in kwargs:
        if not isinstance(key, str):
            raise CommandError(f"{command}: argument names must be strings")
        if key in accepted:
            kept[key] = kwargs[key]
        elif key in refused:
            check_kwargs(command, {key: None}, accepted)  # raises with the reason
        elif not _KWARG_NAME_RE.fullmatch(key):
            raise CommandError(f"{command}: invalid argument name {key[:64]!r}")
    for key, value in kept.items():
        if key in FILTER_FLAGS:
            if not isinstance(value, bool):
                raise CommandError(f"{command}: {key} must be true or false")
        elif key in FILTER_TAGS:
            _check_tag_value(command, key, value)
        else:
            checker = extra[key]
            if checker is None:
                check_plain_value(value, f"{command}: {key}")
            else:
                checker(value)
    return kept


def _check_tag_value(command: str, key: str, value: Any) -> None:
    if key == "time" and (
        (isinstance(value, int | float) and not isinstance(value, bool))
        or (isinstance(value, str) and _TIME_TAG_RE.fullmatch(value))
    ):
        return
    if key == "twig" and isinstance(value, str) and _TWIG_FILTER_RE.fullmatch(value):
        return
    values = value if isinstance(value, list) else [value]
    if len(values) > 1000:
        raise CommandError(f"{command}: too many values for {key}")
    for item in values:
        if item is None:
            continue
        if not isinstance(item, str) or not _TAG_VALUE_RE.fullmatch(item):
            raise CommandError(
                f"{command}: {key} must be a label (letters, digits, '_', '@', ',', wildcards)"
            )


def check_plain_value(value: Any, what: str, *, allow_dict: bool = False, depth: int = 0) -> None:
    """Check a value is plain JSON data PHOEBE will only store or convert.

    Accepts ``None``, bools, finite-or-not numbers, strings (bounded length) and nested
    lists of those; dicts (string keys) only if ``allow_dict``.  Dicts are refused
    elsewhere because PHOEBE turns them into objects (``nparray.from_dict``,
    ``distl.from_dict``) or treats their keys as twigs.
    """
    if depth > MAX_VALUE_DEPTH:
        raise CommandError(f"{what}: value nested too deeply")
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise CommandError(f"{what}: string longer than {MAX_STRING_LENGTH} characters")
        return
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_LENGTH:
            raise CommandError(f"{what}: list too long")
        if value and all(type(v) is float or type(v) is int for v in value):
            return
        for item in value:
            check_plain_value(item, what, allow_dict=False, depth=depth + 1)
        return
    if isinstance(value, dict) and allow_dict:
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 1024:
                raise CommandError(f"{what}: dict keys must be short strings")
            check_plain_value(item, what, allow_dict=False, depth=depth + 1)
        return
    raise CommandError(f"{what}: unsupported value of type {type(value).__name__}")
