"""Checks on PHOEBE's ``copy_for``: the per-component/per-dataset copies of a parameter.

A parameter with ``copy_for`` (and, by convention, the reserved ``_default`` label on
the tag it is copied along) is a template: PHOEBE's ``ParameterSet._check_copy_for``
(``phoebe/parameters/parameters.py``), run whenever parameters are attached and on
``add_dataset``/``add_component``, makes one copy per matching label.  It passes the
dict's keys to ``filter`` and, for a key whose value is ``"*"`` or a dict, reads
``getattr(ps, key + "s")`` and sets ``newparam._<key>`` on each copy, so the keys act
as attribute names and several ``"*"`` keys multiply the number of copies.

:func:`check_copy_for` is called on client ``attach_parameters`` specs (by
:func:`phoebe_kernel_worker.safety.ui_parameters.build_ui_parameters`) and on every parameter
of a loaded bundle (by :mod:`phoebe_kernel_worker.safety.bundle`).
"""

from __future__ import annotations

from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.patterns import (
    COMPONENT_KINDS,
    DATASET_KINDS,
    FEATURE_KINDS,
    LABEL_RE,
)

__all__ = [
    "COPY_FOR_CONTEXTS",
    "COPY_FOR_EXPANDING_TAGS",
    "COPY_FOR_KINDS",
    "COPY_FOR_TAGS",
    "DEFAULT_LABEL",
    "check_copy_for",
]

#: Tags a ``copy_for`` dict may name (PHOEBE uses the keys as attribute names).
COPY_FOR_TAGS: frozenset[str] = frozenset({"context", "kind", "component", "dataset", "feature"})
#: Of those, the tags that may take ``"*"`` or a dict (one copy per label).
COPY_FOR_EXPANDING_TAGS: frozenset[str] = frozenset({"component", "dataset", "feature"})
#: Kinds a ``copy_for`` may select: PHOEBE's dataset, component and feature kinds (and
#: the ``rv_dep`` kind its compute options name).
COPY_FOR_KINDS: frozenset[str] = (
    DATASET_KINDS | COMPONENT_KINDS | FEATURE_KINDS | {"rv_dep", "disk", "custombody"}
)
#: The contexts a ``copy_for`` may select.
COPY_FOR_CONTEXTS: frozenset[str] = frozenset(
    {"system", "component", "feature", "dataset", "compute", "solver", "figure", "ui"}
)
#: The label PHOEBE reserves for the template a ``copy_for`` parameter is copied from.
DEFAULT_LABEL = "_default"


def check_copy_for(value: Any, what: str, *, client_spec: bool = False) -> None:
    """Check a parameter's ``copy_for`` (PHOEBE's per-component/per-dataset copies).

    PHOEBE's shapes: ``{"kind": ["lc", "rv"], "dataset": "*"}`` (one copy for each
    dataset of those kinds), ``{"kind": ["star"], "component": "*"}``,
    ``{"component": {"kind": "star"}, "dataset": {"kind": "rv"}}`` and
    ``{"context": "feature", "feature": "*"}``; ``False``/``None``/``{}`` mean none.
    Keys must be in :data:`COPY_FOR_TAGS` (PHOEBE uses them as attribute names),
    ``"*"`` and dicts only for :data:`COPY_FOR_EXPANDING_TAGS`, kinds from
    :data:`COPY_FOR_KINDS`, contexts from :data:`COPY_FOR_CONTEXTS`, labels from
    PHOEBE's label alphabet.  ``client_spec`` (``attach_parameters``) allows only
    ``kind``, ``dataset`` and ``component`` and no dicts.  Raises :class:`UnsafeInput`.
    Called by :func:`phoebe_kernel_worker.safety.ui_parameters.build_ui_parameters` and the
    bundle checks of :mod:`phoebe_kernel_worker.safety.bundle`.
    """
    if value is None or value is False:
        return
    if not isinstance(value, dict):
        raise UnsafeInput(f"{what}: copy_for must be an object such as {_COPY_FOR_EXAMPLE}")
    tags = {"kind", "dataset", "component"} if client_spec else COPY_FOR_TAGS
    for key, item in value.items():
        if key not in tags:
            raise UnsafeInput(
                f"{what}: copy_for keys must be among {sorted(tags)}, not {str(key)[:64]!r}"
            )
        if key in COPY_FOR_EXPANDING_TAGS and item == "*":
            continue
        if isinstance(item, dict) and key in COPY_FOR_EXPANDING_TAGS and not client_spec:
            for sub_key, sub_item in item.items():
                if sub_key not in ("kind", "context"):
                    raise UnsafeInput(f"{what}: copy_for {key} may only select by kind or context")
                _check_copy_for_values(sub_key, sub_item, what)
            continue
        _check_copy_for_values(key, item, what)


_COPY_FOR_EXAMPLE = '{"kind": ["lc", "rv"], "dataset": "*"}'


def _check_copy_for_values(key: str, item: Any, what: str) -> None:
    items = item if isinstance(item, list) else [item]
    if not items or len(items) > 64:
        raise UnsafeInput(f"{what}: copy_for {key} must name 1-64 values")
    for entry in items:
        if key == "kind":
            ok = entry in COPY_FOR_KINDS
        elif key == "context":
            ok = entry in COPY_FOR_CONTEXTS
        else:
            ok = isinstance(entry, str) and (
                entry == DEFAULT_LABEL or LABEL_RE.fullmatch(entry) is not None
            )
        if not ok:
            allowed = {
                "kind": f"one of {sorted(COPY_FOR_KINDS)}",
                "context": f"one of {sorted(COPY_FOR_CONTEXTS)}",
            }.get(key, "'*' or labels (letters, digits, '_')")
            raise UnsafeInput(f"{what}: copy_for {key} must be {allowed}, not {entry!r}")
