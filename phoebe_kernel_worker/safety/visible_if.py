"""visible_if: the conditions PHOEBE turns into attribute lookups and method calls.

A parameter's ``visible_if`` (bundle parameters) makes PHOEBE call
``getattr(hierarchy, name)(component)`` for ``hierarchy.name:value`` conditions and
``getattr(parameter, tag)`` for ``qualifier:<tag>`` values, so any hierarchy method
(``save``, ``set_value``, ``open``, ...) or parameter attribute was reachable.

:func:`check_visible_if` accepts only PHOEBE's visible_if syntax with the read-only
hierarchy predicates its own parameter definitions use.  Pure (no PHOEBE import);
called by the bundle checks (:mod:`phoebe_kernel_worker.safety.bundle`).
"""

from __future__ import annotations

from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.patterns import META_TAGS, NAME_RE, VISIBLE_IF_VALUE_RE

__all__ = [
    "HIERARCHY_PREDICATES",
    "MAX_VISIBLE_IF_LENGTH",
    "VISIBLE_IF_VALUE_TAGS",
    "check_visible_if",
]

#: The hierarchy methods a ``hierarchy.<method>:<value>`` condition may call: the ones
#: PHOEBE's own parameter definitions use (``phoebe/parameters/*.py``), all read-only
#: predicates taking a component label.
HIERARCHY_PREDICATES: frozenset[str] = frozenset({"is_meshable", "is_contact_binary", "is_binary"})
#: ``<name>`` values of a condition: PHOEBE's three keywords, or a tag of the parameter
#: (PHOEBE reads it with ``getattr``), limited to the meta tags.
VISIBLE_IF_VALUE_TAGS: frozenset[str] = frozenset({"notempty", "plural", "empty"}) | (
    frozenset(META_TAGS) - {"constraint", "distribution"}
)
#: Tags a ``[tag]`` prefix may drop from the lookup of the referenced parameter.
_VISIBLE_IF_DROP_TAGS = VISIBLE_IF_VALUE_TAGS - {"notempty", "plural", "empty"} | {"time"}
MAX_VISIBLE_IF_LENGTH = 1024
MAX_VISIBLE_IF_CONDITIONS = 16


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
    if not NAME_RE.fullmatch(qualifier):
        raise UnsafeInput(f"{what}: invalid qualifier {qualifier!r}")
    if value.startswith("<") and value.endswith(">"):
        if value[1:-1] not in VISIBLE_IF_VALUE_TAGS:
            raise UnsafeInput(
                f"{what}: {value!r} is not allowed (use one of "
                f"{', '.join('<' + t + '>' for t in sorted(VISIBLE_IF_VALUE_TAGS))})"
            )
        return
    if not VISIBLE_IF_VALUE_RE.fullmatch(value):
        raise UnsafeInput(f"{what}: invalid value {value!r} in {condition!r}")
