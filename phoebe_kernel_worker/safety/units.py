"""Unit strings: the small language every string handed to astropy's unit parser must fit.

Unit strings (``get_value(unit=...)``, ``set_value(unit=...)``, a UnitParameter's value,
``attach_parameters`` ``default_unit``, and a loaded bundle's ``default_unit`` and
distribution/array ``unit`` keys) go to astropy's unit parser, which evaluates numeric
scale factors with Python integers: ``"10**1000000000 d"`` pins a core in C code that no
interrupt reaches.

:func:`check_unit_string` accepts only the small language PHOEBE itself writes (unit
names, ``*``, ``/``, spaces, parentheses and small integer powers).  Pure (no PHOEBE or
astropy import); called by the command checks (:mod:`phoebe_kernel_worker.commands`,
:mod:`~phoebe_kernel_worker.safety.edits`, :mod:`~phoebe_kernel_worker.safety.ui_parameters`),
the bundle checks (:mod:`~phoebe_kernel_worker.safety.bundle`,
:mod:`~phoebe_kernel_worker.safety.object_dicts`) and the patch on astropy's parser
(:mod:`~phoebe_kernel_worker.safety.patches`).
"""

from __future__ import annotations

import re
from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.patterns import UNIT_NAME_POWER_RE, UNIT_TOKEN_RE

__all__ = ["MAX_UNIT_LENGTH", "MAX_UNIT_POWER", "check_unit_string", "is_unit_string"]

#: Longest unit string accepted (PHOEBE's longest is ``"W / (nm m2)"``).
MAX_UNIT_LENGTH = 64
#: Largest absolute integer power of a unit (``m2``, ``s**-1``, ``cm^3``).
MAX_UNIT_POWER = 10
#: Deepest nesting of parentheses in a unit string.
MAX_UNIT_PARENS = 3


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
        match = UNIT_TOKEN_RE.match(text, pos)
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
                match = UNIT_NAME_POWER_RE.fullmatch(token)
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
