"""Commands that change the bundle: the arguments of ``set_value`` and ``add_dataset``.

:class:`phoebe_kernel_worker.commands.PhoebeSession` calls these before handing client
arguments to PHOEBE.  They build on the generic argument checks
(:mod:`~phoebe_kernel_worker.safety.arguments`) and add what depends on the live bundle:
which class a ``set_value`` target has, which parameters the variables of a new
constraint expression name (:mod:`~phoebe_kernel_worker.safety.expressions`), which
qualifiers a dataset kind has and which components the hierarchy holds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.protocol.limits import DEFAULT_LIMITS, WorkerLimits
from phoebe_kernel_worker.safety.arguments import (
    check_filter_kwargs,
    check_index,
    check_kwargs,
    check_label,
    filter_only,
)
from phoebe_kernel_worker.safety.costs import check_ntriangles
from phoebe_kernel_worker.safety.expressions import (
    analyze_expression,
    check_constraint_variable,
    check_safe_labels,
    safe_label,
    safe_label_form,
)
from phoebe_kernel_worker.safety.patterns import DATASET_KINDS
from phoebe_kernel_worker.safety.units import check_unit_string
from phoebe_kernel_worker.safety.values import check_plain_value

__all__ = [
    "check_add_dataset_kwargs",
    "check_constraint_expression",
    "check_set_value",
    "dataset_qualifiers",
]

_SKIP = {"check_visible": False, "check_default": False}

#: Parameter classes whose value a client may never set.
_UNSETTABLE_CLASSES = frozenset(
    {"JobParameter", "CodeParameter", "DistributionParameter", "HierarchyParameter"}
)


def check_set_value(
    bundle: Any, value: Any, kwargs: Mapping[str, Any], limits: WorkerLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Check ``set_value(value, **kwargs)``; return the keyword arguments to pass on.

    Filter keywords PHOEBE ignores are dropped (see
    :func:`phoebe_kernel_worker.safety.arguments.check_filter_kwargs`).

    A ConstraintParameter target takes an expression that must pass the AST allow-list
    and whose ``{twig}`` variables must be numeric or choice parameters outside the
    ``ui`` context (see :func:`phoebe_kernel_worker.safety.expressions.check_constraint_variable`).
    A UnitParameter takes a unit string of the strict grammar; a compute's
    ``ntriangles`` is capped by ``limits``.
    """
    kwargs = check_filter_kwargs(
        "set_value",
        kwargs,
        extra={"unit": _check_unit, "index": check_index},
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
    letters of the variable's uniqueid, see
    :func:`phoebe_kernel_worker.safety.expressions.safe_label`), whose labels must be
    distinct, non-empty and not reserved.  ``target`` is the ConstraintParameter being
    set; the parameter it constrains is a variable too.
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
