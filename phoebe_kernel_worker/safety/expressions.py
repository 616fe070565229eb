"""Constraint expressions: the strings PHOEBE evaluates with ``eval``.

PHOEBE evaluates constraint expressions with Python's ``eval``
(``ConstraintParameter.get_result`` in ``phoebe/parameters/parameters.py``, twice: once
on the expression with ``{twig}`` placeholders replaced by ``repr``-ish values, once on
the "safe label" form with the values as globals *and the builtins available*).  String
values of parameters referenced by a constraint are pasted into that text between
single quotes.

This module is the pure, PHOEBE-free model of what PHOEBE will evaluate:

* :func:`validate_expression` / :func:`analyze_expression`: an AST allow-list for
  constraint expressions (numbers, placeholders, arithmetic, comparisons and calls of
  PHOEBE's constraint math functions; nothing else);
* :func:`safe_label`, :func:`safe_label_form`, :func:`check_safe_labels`: the names
  PHOEBE gives constraint variables in the evaluated text;
* :func:`check_constraint_variable`: which parameters may be constraint variables.

Called by the ``set_value`` check (:mod:`phoebe_kernel_worker.safety.edits`), the
bundle checks (:mod:`phoebe_kernel_worker.safety.bundle`) and the run-time patches
right before PHOEBE evaluates (:mod:`phoebe_kernel_worker.safety.patches`).
"""

from __future__ import annotations

import ast
import functools
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.patterns import (
    PLACEHOLDER_RE,
    PRINTABLE_ASCII_RE,
    TWIG_RE,
    is_quote_safe,
)

__all__ = [
    "ALLOWED_CONSTANT_NAMES",
    "ALLOWED_FUNCTIONS",
    "ExpressionInfo",
    "analyze_expression",
    "check_constraint_variable",
    "check_safe_labels",
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

MAX_EXPRESSION_LENGTH = 4000
MAX_EXPRESSION_NODES = 1000
MAX_EXPRESSION_DEPTH = 60
MAX_INT_CONSTANT = 10**18
MAX_CONSTANT_EXPONENT = 1000.0
MAX_CONSTANT_BASE = 1.0e6

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
    if not PRINTABLE_ASCII_RE.fullmatch(expr):
        raise UnsafeInput("constraint expression may only contain printable ASCII characters")
    if _PLACEHOLDER_PREFIX in expr:
        raise UnsafeInput(f"constraint expression may not contain {_PLACEHOLDER_PREFIX!r}")

    names: dict[str, str] = {}
    if variable_names is None:

        def _replace(match: re.Match[str]) -> str:
            twig = match.group(0)[1:-1]
            if not TWIG_RE.fullmatch(twig):
                raise UnsafeInput(f"invalid twig {twig!r} in constraint expression")
            name = f"{_PLACEHOLDER_PREFIX}{len(names)}"
            names[name] = twig
            return name

        source = PLACEHOLDER_RE.sub(_replace, expr)
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
    for placeholder in PLACEHOLDER_RE.findall(expr):
        expr = expr.replace(placeholder, labels[placeholder[1:-1]])
    return expr


# ------------------------------------------------------------ constraint variables


def check_constraint_variable(
    variable: Any, twig: str, *, in_arithmetic: bool, has_calls: bool
) -> None:
    """Refuse a constraint variable whose value PHOEBE could paste unsafely into ``eval``.

    Called by the run-time patch before PHOEBE evaluates a constraint
    (:func:`phoebe_kernel_worker.safety.patches.check_constraint_before_eval`) and by
    ``set_value`` on a ConstraintParameter before the new expression is stored
    (:func:`phoebe_kernel_worker.safety.edits.check_constraint_expression`).
    ``in_arithmetic``: the variable appears outside a direct call argument;
    ``has_calls``: the expression calls a function (PHOEBE then formats values into
    the text, arrays as Python lists and strings between quotes).
    """
    cls = type(variable).__name__
    if cls == "FloatParameter":
        return
    if cls == "FloatArrayParameter":
        if in_arithmetic and has_calls:
            raise UnsafeInput(
                f"array parameter {twig!r} may only be a function argument in an expression "
                "that calls functions"
            )
        return
    if cls == "ChoiceParameter":
        if in_arithmetic:
            raise UnsafeInput(f"choice parameter {twig!r} may only be a function argument")
        if not is_quote_safe(variable.get_value()):
            raise UnsafeInput(f"choice parameter {twig!r} has a value unsafe for constraints")
        return
    raise UnsafeInput(f"{cls} {twig!r} cannot be used in a constraint")
