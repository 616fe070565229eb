"""Per-command argument checks that need the live bundle.

:class:`phoebe_kernel_worker.commands.PhoebeSession` calls these before handing client
arguments to PHOEBE.  They build on the generic checks of
:mod:`phoebe_kernel_worker.safety` and add what depends on the bundle: which dataset,
compute and solver qualifiers exist, which components the hierarchy has, which classes
a ``set_value`` target and the variables of a new constraint expression have, and how
``attach_parameters`` specs become PHOEBE parameters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from phoebe_kernel_worker.copy_for import DEFAULT_LABEL, check_copy_for
from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.grammar import check_unit_string
from phoebe_kernel_worker.guards import check_constraint_variable
from phoebe_kernel_worker.limits import check_ntriangles
from phoebe_kernel_worker.protocol.limits import DEFAULT_LIMITS, WorkerLimits
from phoebe_kernel_worker.safety import (
    DATASET_KINDS,
    DENIED_KWARGS,
    FILTER_FLAGS,
    FILTER_TAGS,
    MAX_STRING_LENGTH,
    analyze_expression,
    check_filter_kwargs,
    check_kwargs,
    check_label,
    check_plain_value,
    check_safe_labels,
    is_quote_safe,
    safe_label,
    safe_label_form,
)

__all__ = [
    "build_ui_parameters",
    "check_add_dataset_kwargs",
    "check_run_compute_kwargs",
    "check_run_solver_kwargs",
    "check_set_value",
    "filter_only",
]

_SKIP = {"check_visible": False, "check_default": False}

#: Parameter classes whose value a client may never set.
_UNSETTABLE_CLASSES = frozenset(
    {"JobParameter", "CodeParameter", "DistributionParameter", "HierarchyParameter"}
)
#: Compute/solver options that cannot be overridden per run.
_RUN_DENIED_OPTIONS = frozenset({"use_server", "progress_every_niters"})

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
_QUALIFIER_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
MAX_UI_PARAMETERS_PER_CALL = 1000


def filter_only(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The filter tags and flags out of a command's keyword arguments."""
    return {k: v for k, v in kwargs.items() if k in FILTER_TAGS or k in FILTER_FLAGS}


# ----------------------------------------------------------------------------- set_value


def check_set_value(
    bundle: Any, value: Any, kwargs: Mapping[str, Any], limits: WorkerLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Check ``set_value(value, **kwargs)``; return the keyword arguments to pass on.

    Filter keywords PHOEBE ignores are dropped (see
    :func:`phoebe_kernel_worker.safety.check_filter_kwargs`).

    A ConstraintParameter target takes an expression that must pass the AST allow-list
    and whose ``{twig}`` variables must be numeric or choice parameters outside the
    ``ui`` context (see :func:`phoebe_kernel_worker.guards.check_constraint_variable`).
    A UnitParameter takes a unit string of the strict grammar; a compute's
    ``ntriangles`` is capped by ``limits``.
    """
    kwargs = check_filter_kwargs(
        "set_value",
        kwargs,
        extra={"unit": _check_unit, "index": _check_index},
    )
    target = bundle.get_parameter(**filter_only(kwargs))
    cls = type(target).__name__
    if cls in _UNSETTABLE_CLASSES:
        raise UnsafeInput(f"set_value: {cls} values cannot be set in this service")
    if target.qualifier == "ntriangles":
        check_ntriangles(limits, value, f"set_value: {target.twig}")
    if cls == "UnitParameter":
        check_unit_string(value, "set_value: value")
    elif cls == "ConstraintParameter":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CommandError("set_value: a constraint takes an expression string")
        check_constraint_expression(bundle, str(value), target)
    elif cls == "DictParameter":
        check_plain_value(value, "set_value: value", allow_dict=True)
    else:
        check_plain_value(value, "set_value: value")
    return kwargs


def check_constraint_expression(bundle: Any, expr: str, target: Any = None) -> None:
    """Check a new constraint expression and the parameters its placeholders name.

    Models what PHOEBE will evaluate: the ``{twig}`` form must pass the allow-list, and
    so must the safe-label form PHOEBE builds from it (each placeholder replaced by the
    letters of the variable's uniqueid, see :func:`phoebe_kernel_worker.safety.safe_label`),
    whose labels must be distinct, non-empty and not reserved.  ``target`` is the
    ConstraintParameter being set; the parameter it constrains is a variable too.
    """
    info = analyze_expression(expr)
    labels: dict[str, str] = {}
    uniqueids: dict[str, str] = {}
    for twig in dict.fromkeys(info.twigs):
        matches = bundle.filter(twig=twig, **_SKIP)
        if len(matches) != 1:
            raise CommandError(f"set_value: {twig!r} does not name exactly one parameter")
        variable = matches.to_list()[0]
        if variable.context in ("ui", "constraint"):
            raise UnsafeInput(
                f"set_value: {variable.context} parameters cannot be constraint variables"
            )
        check_constraint_variable(
            variable, twig, in_arithmetic=twig in info.other_twigs, has_calls=info.has_calls
        )
        labels[twig] = safe_label(str(variable.uniqueid))
        uniqueids[str(variable.uniqueid)] = labels[twig]
    try:
        constrained = target.constrained_parameter if target is not None else None
    except (KeyError, ValueError):  # a constraint not attached to a parameter yet
        constrained = None
    if constrained is not None:
        uniqueids.setdefault(str(constrained.uniqueid), safe_label(str(constrained.uniqueid)))
    check_safe_labels(uniqueids)
    analyze_expression(safe_label_form(expr, labels), frozenset(labels.values()))


def _check_unit(value: Any) -> None:
    check_unit_string(value, "unit")


def _check_index(value: Any) -> None:
    if type(value) is not int:
        raise CommandError("index must be an integer")


# --------------------------------------------------------------------------- add_dataset


@functools.cache
def dataset_qualifiers(kind: str) -> frozenset[str]:
    """Qualifiers of the parameters PHOEBE creates for a dataset of ``kind``."""
    from phoebe.parameters import dataset

    params, _constraints = getattr(dataset, kind)(
        dataset="qualifier_probe", component_top="binary", as_ps=False
    )
    return frozenset(p.qualifier for p in params)


def check_add_dataset_kwargs(bundle: Any, kwargs: Mapping[str, Any]) -> None:
    """Check ``add_dataset(**kwargs)``: the kind, the label and every parameter value.

    Dict values (``{"primary": [...], "secondary": [...]}``) are accepted only with
    component labels of the hierarchy as keys and not for constrained qualifiers,
    because PHOEBE applies dict values without restricting the context, which would
    reach the dataset's ConstraintParameters.
    """
    kind = kwargs.get("kind")
    if kind not in DATASET_KINDS:
        raise UnsafeInput(f"add_dataset: kind must be one of {sorted(DATASET_KINDS)}")
    allowed = (
        {"kind", "dataset", "component", "components", "overwrite", "auto_add_figure"}
        | {"time", "flux", "sigma", "rv", "flux_densities", "color", "marker", "linestyle"}
        | dataset_qualifiers(kind)
    )
    check_kwargs("add_dataset", kwargs, allowed)
    if kwargs.get("dataset") is not None:
        check_label(kwargs["dataset"], "add_dataset: dataset")
    hierarchy = bundle.hierarchy
    components = {"_default"}
    components.update(hierarchy.get_stars(), hierarchy.get_orbits(), hierarchy.get_envelopes())
    constrained = set(bundle.filter(context="constraint", **_SKIP).qualifiers)
    constrained |= {"compute_times", "compute_phases"}
    for key, value in kwargs.items():
        what = f"add_dataset: {key}"
        if key in ("kind", "dataset"):
            continue
        if key in ("overwrite", "auto_add_figure"):
            if not isinstance(value, bool):
                raise CommandError(f"{what} must be true or false")
        elif key in ("component", "components"):
            _check_components(value, components, what)
        elif isinstance(value, dict):
            if key in constrained:
                raise UnsafeInput(f"{what}: per-component values are not allowed here")
            _check_components(list(value), components, what)
            for item in value.values():
                check_plain_value(item, what)
        else:
            check_plain_value(value, what)


def _check_components(value: Any, components: set[str], what: str) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is not None and item not in components:
            raise CommandError(f"{what}: {item!r} is not a component of this system")


# ----------------------------------------------------------------------- run_compute / run_solver


def check_run_compute_kwargs(bundle: Any, kwargs: Mapping[str, Any]) -> None:
    """Check ``run_compute(**kwargs)``: structural arguments plus compute-option overrides."""
    structural = {
        "compute": _check_tag_list,
        "model": lambda v: check_label(v, "run_compute: model"),
        "dataset": _check_tag_list,
        "times": _check_times,
        "overwrite": _check_bool,
        "solution": _check_tag,
        "sample_from": _check_tag_list,
        "sample_num": _check_positive_int,
        "sample_mode": _check_tag,
        "skip_checks": _check_bool,
        "progressbar": _check_bool,
    }
    options = set(bundle.filter(context="compute", **_SKIP).qualifiers) - _RUN_DENIED_OPTIONS
    _check_run_kwargs("run_compute", kwargs, structural, options)


def check_run_solver_kwargs(bundle: Any, kwargs: Mapping[str, Any]) -> str | None:
    """Check ``run_solver(**kwargs)``; return the solver label it will use, if known."""
    solver = kwargs.get("solver")
    if solver is not None:
        _check_tag(solver)
    elif len(bundle.solvers) == 1:
        solver = bundle.solvers[0]
    structural = {
        "solver": _check_tag,
        "solution": lambda v: check_label(v, "run_solver: solution"),
        "overwrite": _check_bool,
        "skip_checks": _check_bool,
        "progressbar": _check_bool,
    }
    solver_ps = bundle.filter(context="solver", solver=solver, **_SKIP)
    options = set(solver_ps.qualifiers) | set(bundle.filter(context="compute", **_SKIP).qualifiers)
    options -= _RUN_DENIED_OPTIONS
    dict_options = {p.qualifier for p in solver_ps.to_list() if type(p).__name__ == "DictParameter"}
    _check_run_kwargs("run_solver", kwargs, structural, options, dict_options)
    return solver


def _check_run_kwargs(
    command: str,
    kwargs: Mapping[str, Any],
    structural: Mapping[str, Any],
    options: set[str],
    dict_options: set[str] | None = None,
) -> None:
    for key in kwargs:
        if key in _RUN_DENIED_OPTIONS:
            raise UnsafeInput(f"{command}: {key!r} cannot be set by this service")
    check_kwargs(command, kwargs, set(structural) | options)
    for key, value in kwargs.items():
        if key in structural:
            structural[key](value)
        elif key in (dict_options or set()) and isinstance(value, dict):
            for dkey, item in value.items():
                if not isinstance(dkey, str) or not is_quote_safe(dkey):
                    raise CommandError(f"{command}: {key} keys must be twigs")
                if not isinstance(item, int | float) or isinstance(item, bool):
                    raise CommandError(f"{command}: {key} values must be numbers")
        else:
            check_plain_value(value, f"{command}: {key}")


def _check_bool(value: Any) -> None:
    if not isinstance(value, bool):
        raise CommandError("expected true or false")


def _check_positive_int(value: Any) -> None:
    if type(value) is not int or not 0 < value <= 100_000:
        raise CommandError("expected a positive integer")


def _check_tag(value: Any) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", value):
        raise CommandError(f"expected a label, got {value!r}")


def _check_tag_list(value: Any) -> None:
    if value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        _check_tag(item)


def _check_times(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_tag(key)
            check_plain_value(item, "times")
    else:
        check_plain_value(value, "times")


# ---------------------------------------------------------------------- attach_parameters


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
    :func:`phoebe_kernel_worker.copy_for.check_copy_for` (tags ``kind``, ``dataset``,
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
    if not isinstance(kwargs.get("qualifier"), str) or not _QUALIFIER_RE.fullmatch(
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
