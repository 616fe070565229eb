"""Strict grammars for the strings PHOEBE hands to parsers or turns into lookups.

Two kinds of client strings reach code that is far more powerful than they need:

* **unit strings** (``get_value(unit=...)``, ``set_value(unit=...)``, a UnitParameter's
  value, ``attach_parameters`` ``default_unit``, and a loaded bundle's ``default_unit``
  and distribution/array ``unit`` keys) go to astropy's unit parser, which evaluates
  numeric scale factors with Python integers: ``"10**1000000000 d"`` pins a core in C
  code that no interrupt reaches;
* **visible_if** expressions (bundle parameters) make PHOEBE call
  ``getattr(hierarchy, name)(component)`` for ``hierarchy.name:value`` conditions and
  ``getattr(parameter, tag)`` for ``qualifier:<tag>`` values, so any hierarchy method
  (``save``, ``set_value``, ``open``, ...) or parameter attribute was reachable.

:func:`check_unit_string` and :func:`check_visible_if` accept only the small languages
PHOEBE itself writes (unit names, ``*``, ``/``, spaces, parentheses and small integer
powers; PHOEBE's visible_if syntax with the read-only hierarchy predicates its own
parameter definitions use).  They are pure (no PHOEBE or astropy import) and are called
by :mod:`phoebe_kernel_worker.command_args`, :mod:`phoebe_kernel_worker.bundle_safety`
and the run-time guard on astropy's parser in :mod:`phoebe_kernel_worker.guards`.
"""

from __future__ import annotations

import re
from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput

__all__ = [
    "HIERARCHY_PREDICATES",
    "MAX_UNIT_LENGTH",
    "MAX_UNIT_POWER",
    "MAX_VISIBLE_IF_LENGTH",
    "VISIBLE_IF_VALUE_TAGS",
    "check_unit_string",
    "check_visible_if",
    "is_unit_string",
]

#: Longest unit string accepted (PHOEBE's longest is ``"W / (nm m2)"``).
MAX_UNIT_LENGTH = 64
#: Largest absolute integer power of a unit (``m2``, ``s**-1``, ``cm^3``).
MAX_UNIT_POWER = 10
#: Deepest nesting of parentheses in a unit string.
MAX_UNIT_PARENS = 3

#: The hierarchy methods a ``hierarchy.<method>:<value>`` condition may call: the ones
#: PHOEBE's own parameter definitions use (``phoebe/parameters/*.py``), all read-only
#: predicates taking a component label.
HIERARCHY_PREDICATES: frozenset[str] = frozenset({"is_meshable", "is_contact_binary", "is_binary"})
#: ``<name>`` values of a condition: PHOEBE's three keywords, or a tag of the parameter
#: (PHOEBE reads it with ``getattr``), limited to the meta tags.
VISIBLE_IF_VALUE_TAGS: frozenset[str] = frozenset(
    {
        "notempty",
        "plural",
        "empty",
        "component",
        "dataset",
        "feature",
        "compute",
        "model",
        "solver",
        "solution",
        "figure",
        "kind",
        "context",
        "qualifier",
    }
)
#: Tags a ``[tag]`` prefix may drop from the lookup of the referenced parameter.
_VISIBLE_IF_DROP_TAGS = VISIBLE_IF_VALUE_TAGS - {"notempty", "plural", "empty"} | {"time"}
MAX_VISIBLE_IF_LENGTH = 1024
MAX_VISIBLE_IF_CONDITIONS = 16

_UNIT_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<power>(?:\*\*|\^)\s*(?:\(\s*[+-]?[0-9]{1,2}\s*\)|[+-]?[0-9]{1,2}))
    | (?P<name>[A-Za-z_]+(?:[+-]?[0-9]{1,2})?)
    | (?P<one>1)
    | (?P<op>[*/])
    | (?P<open>\()
    | (?P<close>\))
    """,
    re.VERBOSE,
)
_NAME_POWER_RE = re.compile(r"[A-Za-z_]+([+-]?[0-9]+)?")
_VI_QUALIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_VI_VALUE_RE = re.compile(r"[!~]?[A-Za-z0-9_.*+\-|]{1,256}")


def is_unit_string(text: Any) -> bool:
    """Whether ``text`` passes :func:`check_unit_string`."""
    try:
        check_unit_string(text)
    except UnsafeInput:
        return False
    return True


def check_unit_string(text: Any, what: str = "unit") -> str:
    """Raise :class:`UnsafeInput` unless ``text`` is a plain unit expression; return it.

    Accepted: ``""``, unit names (letters and ``_``, optionally followed by a small
    power: ``m2``, ``s-1``), the number ``1`` (``"1 / d"``), ``*``, ``/``, spaces,
    parentheses (at most :data:`MAX_UNIT_PARENS` deep) and integer powers written
    ``**n``, ``^n`` or ``**(n)`` with ``|n| <= MAX_UNIT_POWER``; at most
    :data:`MAX_UNIT_LENGTH` characters.  No other numbers (scale factors), no powers
    of powers.  Whether the names are known units is left to astropy.
    """
    if not isinstance(text, str):
        raise UnsafeInput(f"{what} must be a unit string such as 'd', 'km / s' or 'solRad'")
    if len(text) > MAX_UNIT_LENGTH:
        raise UnsafeInput(f"{what} may be at most {MAX_UNIT_LENGTH} characters long")
    if text.strip() in ("", "dimensionless"):
        return text
    tokens = _tokenize_unit(text, what)
    _parse_unit(tokens, what)
    return text


def _tokenize_unit(text: str, what: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _UNIT_TOKEN_RE.match(text, pos)
        if match is None:
            raise UnsafeInput(
                f"{what} {text!r} is not a plain unit: use unit names, '*', '/', "
                f"parentheses and integer powers up to {MAX_UNIT_POWER} (e.g. 'W / m2', "
                "'km / s', 'cm**-2'); numbers and scale factors are not accepted"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group(0)))
        pos = match.end()
    return tokens


def _power_value(token: str) -> int:
    digits = re.sub(r"[^0-9+\-]", "", token)
    return int(digits) if digits not in ("", "+", "-") else 1


def _parse_unit(tokens: list[tuple[str, str]], what: str) -> None:
    """Check the token sequence: ``term ((op)? term)*`` with powers after terms only."""
    depth = 0
    expect_term = True  # at the start, after an operator or an opening parenthesis
    after_power = False
    for kind, token in tokens:
        if kind in ("name", "one"):
            if kind == "name":
                match = _NAME_POWER_RE.fullmatch(token)
                if match and match.group(1) and abs(int(match.group(1))) > MAX_UNIT_POWER:
                    raise UnsafeInput(f"{what}: power of {token!r} is above {MAX_UNIT_POWER}")
            expect_term, after_power = False, False
        elif kind == "open":
            depth += 1
            if depth > MAX_UNIT_PARENS:
                raise UnsafeInput(f"{what}: parentheses nested too deeply")
            expect_term, after_power = True, False
        elif kind == "close":
            depth -= 1
            if depth < 0 or expect_term:
                raise UnsafeInput(
                    f"{what}: unbalanced parentheses in {''.join(t for _, t in tokens)!r}"
                )
            expect_term, after_power = False, False
        elif kind == "op":
            if expect_term:
                raise UnsafeInput(f"{what}: operator {token!r} without a unit before it")
            expect_term, after_power = True, False
        else:  # power
            if expect_term or after_power:
                raise UnsafeInput(f"{what}: a power must follow a unit (no powers of powers)")
            if abs(_power_value(token)) > MAX_UNIT_POWER:
                raise UnsafeInput(f"{what}: powers are limited to +-{MAX_UNIT_POWER}")
            after_power = True
    if depth != 0 or expect_term:
        raise UnsafeInput(f"{what}: incomplete unit expression")


# ------------------------------------------------------------------------- visible_if


def check_visible_if(text: Any, what: str = "visible_if") -> None:
    """Raise :class:`UnsafeInput` unless ``text`` is a visible_if PHOEBE's parser handles safely.

    The syntax (``Parameter._is_visible``): conditions joined by ``,`` (and) and ``||``
    (or); a condition is ``false`` or ``[tag][tag]...qualifier:value``, where
    ``qualifier`` is a parameter qualifier or ``hierarchy.<predicate>`` with a
    predicate of :data:`HIERARCHY_PREDICATES`, and ``value`` is ``[!~]`` plus a plain
    value (alternatives joined by ``|``) or ``<tag>`` with a tag of
    :data:`VISIBLE_IF_VALUE_TAGS`.  ``None`` is accepted (no condition).
    """
    if text is None:
        return
    if not isinstance(text, str) or len(text) > MAX_VISIBLE_IF_LENGTH:
        raise UnsafeInput(f"{what} must be a string of at most {MAX_VISIBLE_IF_LENGTH} characters")
    conditions = text.replace("||", ",").split(",")
    if len(conditions) > MAX_VISIBLE_IF_CONDITIONS:
        raise UnsafeInput(f"{what} has more than {MAX_VISIBLE_IF_CONDITIONS} conditions")
    for condition in conditions:
        _check_condition(condition, what)


def _check_condition(condition: str, what: str) -> None:
    if condition.lower() == "false":
        return
    rest = condition
    while rest.startswith("["):
        tag, sep, rest = rest[1:].partition("]")
        if not sep or tag not in _VISIBLE_IF_DROP_TAGS:
            raise UnsafeInput(f"{what}: invalid [tag] prefix in {condition!r}")
    if rest.count(":") != 1:
        raise UnsafeInput(f"{what}: condition {condition!r} must be 'qualifier:value'")
    qualifier, value = rest.split(":")
    if "hierarchy." in qualifier:
        prefix, _, method = qualifier.partition(".")
        if prefix != "hierarchy" or method not in HIERARCHY_PREDICATES:
            raise UnsafeInput(
                f"{what}: {qualifier!r} is not allowed (hierarchy conditions may use "
                f"{', '.join(sorted(HIERARCHY_PREDICATES))})"
            )
        if value not in ("True", "true", "False", "false"):
            raise UnsafeInput(f"{what}: {qualifier} compares with True or False only")
        return
    if not _VI_QUALIFIER_RE.fullmatch(qualifier):
        raise UnsafeInput(f"{what}: invalid qualifier {qualifier!r}")
    if value.startswith("<") and value.endswith(">"):
        if value[1:-1] not in VISIBLE_IF_VALUE_TAGS:
            raise UnsafeInput(
                f"{what}: {value!r} is not allowed (use one of "
                f"{', '.join('<' + t + '>' for t in sorted(VISIBLE_IF_VALUE_TAGS))})"
            )
        return
    if not _VI_VALUE_RE.fullmatch(value):
        raise UnsafeInput(f"{what}: invalid value {value!r} in {condition!r}")
