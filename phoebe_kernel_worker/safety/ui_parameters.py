"""Client parameters: the specs of ``attach_parameters``.

PHOEBE Lab attaches its own widgets' parameters to the bundle in the ``ui`` context.
:func:`build_ui_parameters` (called by
:meth:`phoebe_kernel_worker.commands.PhoebeSession.attach_parameters`) checks each spec
against a short list of keys and types and builds the PHOEBE parameters, so client
parameters can neither shadow PHOEBE's own nor reach the parsers and attribute lookups
other parameter keys lead to.
"""

from __future__ import annotations

from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety.arguments import DENIED_KWARGS, check_label
from phoebe_kernel_worker.safety.copy_for import DEFAULT_LABEL, check_copy_for
from phoebe_kernel_worker.safety.patterns import QUALIFIER_RE, is_quote_safe
from phoebe_kernel_worker.safety.units import check_unit_string
from phoebe_kernel_worker.safety.values import MAX_STRING_LENGTH

__all__ = ["MAX_UI_PARAMETERS_PER_CALL", "build_ui_parameters"]

_SKIP = {"check_visible": False, "check_default": False}

_PTYPES = {
    "choice": "ChoiceParameter",
    "int": "IntParameter",
    "float": "FloatParameter",
    "bool": "BoolParameter",
    "string": "StringParameter",
}
_UI_COMMON_KEYS = frozenset(
    {"ptype", "qualifier", "value", "description", "context", "dataset", "component", "copy_for"}
)
_UI_EXTRA_KEYS = {
    "choice": frozenset({"choices"}),
    "int": frozenset({"limits"}),
    "float": frozenset({"default_unit", "limits"}),
    "bool": frozenset(),
    "string": frozenset(),
}
#: Most parameters one ``attach_parameters`` call may attach.
MAX_UI_PARAMETERS_PER_CALL = 1000


def build_ui_parameters(bundle: Any, specs: Any) -> list[Any]:
    """Turn ``attach_parameters`` specs into PHOEBE parameters in the ``ui`` context.

    Each spec is a dict with ``ptype`` (choice, int, float, bool, string) and only the
    keys ``qualifier``, ``value``, ``description``, ``context`` (must be ``"ui"``, the
    default), ``dataset``, ``component``, ``copy_for``, plus ``choices`` (choice),
    ``limits`` (int, float) and ``default_unit`` (float).  Other contexts are refused so
    client parameters cannot shadow or shadow-match PHOEBE's own; a spec whose
    qualifier, dataset and component already exist in ``ui`` is refused (duplicate twigs
    break every later lookup).

    ``copy_for`` and the reserved ``"_default"`` dataset/component label work as in
    PHOEBE: ``{"copy_for": {"kind": ["lc", "rv"], "dataset": "*"}, "dataset":
    "_default"}`` makes PHOEBE copy the parameter for every lc/rv dataset, now and
    whenever one is added (``phase_min@ds01@ui``).  The shape is checked by
    :func:`phoebe_kernel_worker.safety.copy_for.check_copy_for` (tags ``kind``, ``dataset``,
    ``component``; known kinds; ``"*"`` or labels).
    """
    from phoebe import parameters

    if not isinstance(specs, list) or not specs:
        raise CommandError("attach_parameters: parameters must be a non-empty list")
    if len(specs) > MAX_UI_PARAMETERS_PER_CALL:
        raise CommandError(f"attach_parameters: at most {MAX_UI_PARAMETERS_PER_CALL} per call")
    existing = {
        (p.qualifier, p.dataset, p.component)
        for p in bundle.filter(context="ui", **_SKIP).to_list()
    }
    params = []
    for index, spec in enumerate(specs):
        what = f"attach_parameters: parameter #{index}"
        kwargs = _check_ui_spec(spec, what)
        key = (kwargs["qualifier"], kwargs.get("dataset"), kwargs.get("component"))
        if key in existing:
            raise CommandError(f"{what}: {kwargs['qualifier']!r} already exists in context 'ui'")
        existing.add(key)
        cls = getattr(parameters, _PTYPES[spec["ptype"]])
        params.append(cls(**kwargs))
    return params


def _check_ui_spec(spec: Any, what: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise CommandError(f"{what} must be an object")
    ptype = spec.get("ptype")
    if ptype not in _PTYPES:
        raise CommandError(f"{what}: ptype must be one of {sorted(_PTYPES)}")
    unknown = set(spec) - _UI_COMMON_KEYS - _UI_EXTRA_KEYS[ptype]
    if unknown:
        denied = sorted(k for k in unknown if k in DENIED_KWARGS)
        raise CommandError(f"{what}: keys {denied or sorted(unknown)} are not accepted for {ptype}")
    kwargs = {k: v for k, v in spec.items() if k != "ptype"}
    kwargs.setdefault("context", "ui")
    if kwargs["context"] != "ui":
        raise UnsafeInput(f"{what}: client parameters live in context 'ui' only")
    if not isinstance(kwargs.get("qualifier"), str) or not QUALIFIER_RE.fullmatch(
        kwargs["qualifier"]
    ):
        raise CommandError(f"{what}: qualifier must be a letter followed by letters, digits or '_'")
    for tag in ("dataset", "component"):
        if kwargs.get(tag) is not None and kwargs[tag] != DEFAULT_LABEL:
            check_label(kwargs[tag], f"{what}: {tag}")
    check_copy_for(kwargs.get("copy_for"), what, client_spec=True)
    description = kwargs.get("description", "")
    if not isinstance(description, str) or len(description) > 4096:
        raise CommandError(f"{what}: description must be a string of at most 4096 characters")
    _check_ui_value(ptype, kwargs, what)
    return kwargs


def _check_ui_value(ptype: str, kwargs: dict[str, Any], what: str) -> None:
    value = kwargs.get("value")
    if ptype == "choice":
        choices = kwargs.get("choices")
        if not isinstance(choices, list) or not choices or len(choices) > 1000:
            raise CommandError(f"{what}: choices must be a non-empty list")
        if not all(is_quote_safe(c) for c in choices):
            raise UnsafeInput(
                f"{what}: choices must be printable strings without quotes or backslashes"
            )
        kwargs.setdefault("value", choices[0])
        if kwargs["value"] not in choices:
            raise CommandError(f"{what}: value must be one of the choices")
    elif ptype == "int":
        if type(value) is not int:
            raise CommandError(f"{what}: value must be an integer")
    elif ptype == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise CommandError(f"{what}: value must be a number")
        if kwargs.get("default_unit") is not None:
            check_unit_string(kwargs["default_unit"], f"{what}: default_unit")
    elif ptype == "bool":
        if not isinstance(value, bool):
            raise CommandError(f"{what}: value must be true or false")
    elif not isinstance(value, str) or len(value) > MAX_STRING_LENGTH:
        raise CommandError(f"{what}: value must be a string")
    limits = kwargs.get("limits")
    if limits is not None and not (
        isinstance(limits, list)
        and len(limits) == 2
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limits
        )
    ):
        raise CommandError(f"{what}: limits must be [low, high] (numbers or null)")
    if limits is not None:
        kwargs["limits"] = tuple(limits)
