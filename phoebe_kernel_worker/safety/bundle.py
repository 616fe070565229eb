"""Checks on a client-supplied bundle before ``load_bundle`` hands it to ``phoebe.load``.

A PHOEBE bundle in JSON is a list of parameter dicts.  ``phoebe.load`` instantiates each
one by looking its ``"Class"`` up as an attribute of ``phoebe.parameters.parameters`` and
passing every other key to the constructor; ConstraintParameter values are expressions
that are later ``eval``-ed; DistributionParameter values go through ``distl.from_dict``
(whose ``Function`` class imports arbitrary ``module.function`` paths); FloatArray values
that are dicts go through ``nparray.from_dict`` (attribute lookup plus array allocation);
compute/solver options can point at servers that start processes; CodeParameter and
JobParameter run code or talk to job servers.

:func:`validate_bundle_json` is called by
:meth:`phoebe_kernel_worker.commands.PhoebeSession.load_bundle` on the parsed JSON and
refuses, with :class:`~phoebe_kernel_worker.errors.UnsafeInput`, everything outside an
allow-list built from bundles PHOEBE itself writes (checked by round-trip tests).  The
checks it shares with the command checks live beside it in
:mod:`phoebe_kernel_worker.safety`: constraint expressions (``expressions``), unit
strings (``units``), ``visible_if``, ``copy_for``, distribution and array dicts
(``object_dicts``), plain values (``values``), cost caps (``costs``) and the one table
of patterns (``patterns``).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.protocol.limits import DEFAULT_LIMITS, WorkerLimits
from phoebe_kernel_worker.safety.copy_for import check_copy_for
from phoebe_kernel_worker.safety.costs import check_array_lengths, check_ntriangles
from phoebe_kernel_worker.safety.expressions import analyze_expression
from phoebe_kernel_worker.safety.object_dicts import (
    nparray_size,
    validate_distl_dict,
    validate_nparray_dict,
)
from phoebe_kernel_worker.safety.patterns import (
    COMPONENT_KINDS,
    CONTEXTS,
    DATASET_KINDS,
    FEATURE_KINDS,
    FORMAT_FIELD_RE,
    HIERARCHY_RE,
    META_TAGS,
    TAG_RE,
    TIME_RE,
    TWIG_RE,
    UNIQUEID_RE,
    VERSION_RE,
    is_quote_safe,
)
from phoebe_kernel_worker.safety.units import check_unit_string
from phoebe_kernel_worker.safety.values import BUNDLE_VALUES, check_plain_value
from phoebe_kernel_worker.safety.visible_if import check_visible_if

__all__ = [
    "ALLOWED_PARAMETER_CLASSES",
    "MAX_BUNDLE_PARAMETERS",
    "validate_bundle_json",
]

#: Upper bound on the number of parameters in a loaded bundle.
MAX_BUNDLE_PARAMETERS = 200_000
#: Parameter classes a loaded bundle may contain.  Refused: JobParameter (detached
#: jobs, job servers, files), CodeParameter (``exec``), and anything else the lookup by
#: name could find in ``phoebe.parameters.parameters``.
ALLOWED_PARAMETER_CLASSES: frozenset[str] = frozenset(
    {
        "StringParameter",
        "TwigParameter",
        "ChoiceParameter",
        "SelectParameter",
        "SelectTwigParameter",
        "BoolParameter",
        "UnitParameter",
        "DictParameter",
        "IntParameter",
        "DistributionParameter",
        "FloatParameter",
        "FloatArrayParameter",
        "ArrayParameter",
        "HierarchyParameter",
        "ConstraintParameter",
    }
)
_CHOICE_CLASSES = frozenset(
    {"ChoiceParameter", "SelectParameter", "SelectTwigParameter", "UnitParameter"}
)

_ALLOWED_KEYS: frozenset[str] = frozenset(
    {
        "Class",
        "value",
        "description",
        "uniqueid",
        "readonly",
        "advanced",
        "latexfmt",
        "copy_for",
        "visible_if",
        "choices",
        "default_unit",
        "limits",
        "required_shape",
        "constraint_func",
        "constraint_kwargs",
        "constraint_addl_vars",
        "in_solar_units",
        "time",
        "server",
        *META_TAGS,
    }
)
#: Kinds allowed per context, where PHOEBE resolves the kind to code by name.
#: ``jktebop`` is left out of compute kinds: its backend shells out to an executable.
_KINDS_BY_CONTEXT: Mapping[str, frozenset[str]] = {
    "dataset": DATASET_KINDS,
    "model": DATASET_KINDS,
    "compute": frozenset({"phoebe", "legacy", "ellc"}),
    "solver": frozenset(
        {
            "ebai",
            "lc_geometry",
            "lc_periodogram",
            "rv_geometry",
            "rv_periodogram",
            "cg",
            "differential_corrections",
            "differential_evolution",
            "nelder_mead",
            "powell",
            "dynesty",
            "emcee",
        }
    ),
    "feature": FEATURE_KINDS,
    "component": COMPONENT_KINDS,
}


def validate_bundle_json(
    parsed: Any, *, phoebe_version: str | None = None, limits: WorkerLimits = DEFAULT_LIMITS
) -> None:
    """Raise :class:`UnsafeInput` unless ``parsed`` is a bundle that is safe to load.

    ``parsed`` is the result of ``json.loads`` on the client's bundle string.  Every
    parameter dict is checked: class, keys, tags, kinds, uniqueids (unique), and the
    value according to the class (constraint expressions through the AST allow-list,
    distributions and arrays through their own allow-lists).  The bundle must come
    from the installed PHOEBE's major.minor version (``phoebe_version``, looked up
    from PHOEBE when not given), which keeps PHOEBE's version-migration code, which
    re-adds components and datasets from stored values, out of reach.  Unit strings
    and ``visible_if`` expressions must pass their grammars (``safety.units``,
    ``safety.visible_if``);
    ``ntriangles`` and array lengths must be within ``limits``.
    """
    if not isinstance(parsed, list) or not parsed:
        raise UnsafeInput("bundle must be a non-empty JSON list of parameters")
    if len(parsed) > MAX_BUNDLE_PARAMETERS:
        raise UnsafeInput(f"bundle has more than {MAX_BUNDLE_PARAMETERS} parameters")
    if phoebe_version is None:
        import phoebe

        phoebe_version = str(phoebe.__version__)
    constraint_funcs = _constraint_functions()
    seen_ids: set[str] = set()
    version_seen = False
    for index, param in enumerate(parsed):
        where = f"bundle parameter #{index}"
        if not isinstance(param, dict):
            raise UnsafeInput(f"{where} is not an object")
        _check_parameter(param, where, constraint_funcs)
        _check_costs(param, where, limits)
        uniqueid = param.get("uniqueid")
        if uniqueid is not None:
            if uniqueid in seen_ids:
                raise UnsafeInput(f"{where}: duplicate uniqueid {uniqueid!r}")
            seen_ids.add(uniqueid)
        if param.get("qualifier") == "phoebe_version":
            _check_version(param.get("value"), phoebe_version)
            version_seen = True
    if not version_seen:
        raise UnsafeInput("bundle has no phoebe_version parameter")


def _constraint_functions() -> frozenset[str]:
    """Names ``ConstraintParameter.constraint_func`` may hold (looked up by PHOEBE via getattr)."""
    import types

    from phoebe.parameters import constraint

    return frozenset(
        name
        for name, obj in vars(constraint).items()
        if isinstance(obj, types.FunctionType)
        and obj.__module__ == constraint.__name__
        and not name.startswith("_")
    )


def _check_costs(param: dict[str, Any], where: str, limits: WorkerLimits) -> None:
    """The worker's cost caps: ``ntriangles`` of a compute, array lengths."""
    value = param.get("value")
    try:
        if param.get("qualifier") == "ntriangles" and param.get("context") == "compute":
            check_ntriangles(limits, value, where)
        check_array_lengths(value, limits.max_array_length, where)
    except CommandError as exc:
        raise exc if isinstance(exc, UnsafeInput) else UnsafeInput(str(exc)) from None
    if (
        isinstance(value, dict)
        and value.get("nparray") is not None
        and nparray_size(value) > limits.max_array_length
    ):
        raise UnsafeInput(f"{where}: array would have more than {limits.max_array_length} elements")


def _check_version(value: Any, installed: str) -> None:
    match_bundle = VERSION_RE.fullmatch(value) if isinstance(value, str) else None
    match_installed = VERSION_RE.fullmatch(installed)
    if match_bundle is None or match_installed is None:
        raise UnsafeInput(f"bundle has an unreadable phoebe_version {value!r}")
    if match_bundle.group(1, 2) != match_installed.group(1, 2):
        raise UnsafeInput(
            f"bundle was written by PHOEBE {value}; this service runs PHOEBE {installed} and "
            "only loads bundles of the same major.minor version"
        )


def _check_parameter(param: dict[str, Any], where: str, constraint_funcs: frozenset[str]) -> None:
    cls = param.get("Class")
    if cls not in ALLOWED_PARAMETER_CLASSES:
        raise UnsafeInput(f"{where}: parameter class {cls!r} is not allowed")
    unknown = set(param) - _ALLOWED_KEYS
    if unknown:
        raise UnsafeInput(f"{where}: unexpected keys {sorted(unknown)}")
    if param.get("server") is not None:
        raise UnsafeInput(f"{where}: server parameters are not allowed")
    for tag in META_TAGS:
        value = param.get(tag)
        if value is not None and (not isinstance(value, str) or not TAG_RE.fullmatch(value)):
            raise UnsafeInput(f"{where}: invalid {tag} {value!r}")
    context = param.get("context")
    if context not in CONTEXTS:
        raise UnsafeInput(f"{where}: context {context!r} is not allowed")
    kinds = _KINDS_BY_CONTEXT.get(context)
    kind = param.get("kind")
    if kinds is not None and kind is not None and kind not in kinds:
        raise UnsafeInput(f"{where}: {context} kind {kind!r} is not allowed")
    time = param.get("time")
    if time is not None and not (
        (isinstance(time, int | float) and not isinstance(time, bool))
        or (isinstance(time, str) and TIME_RE.fullmatch(time))
    ):
        raise UnsafeInput(f"{where}: invalid time {time!r}")
    uniqueid = param.get("uniqueid")
    if uniqueid is not None and (
        not isinstance(uniqueid, str) or not UNIQUEID_RE.fullmatch(uniqueid)
    ):
        raise UnsafeInput(f"{where}: invalid uniqueid")
    _check_common_fields(param, where)
    _check_value(cls, param, where, constraint_funcs)


def _check_common_fields(param: dict[str, Any], where: str) -> None:
    for key in ("readonly", "advanced", "in_solar_units"):
        if key in param and not isinstance(param[key], bool):
            raise UnsafeInput(f"{where}: {key} must be a bool")
    for key in ("description", "latexfmt", "visible_if", "default_unit"):
        value = param.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 4096):
            raise UnsafeInput(f"{where}: {key} must be a short string")
    if param.get("default_unit") is not None:
        check_unit_string(param["default_unit"], f"{where}: default_unit")
    check_visible_if(param.get("visible_if"), f"{where}: visible_if")
    latexfmt = param.get("latexfmt")
    if latexfmt is not None and not _is_plain_format(latexfmt):
        raise UnsafeInput(f"{where}: latexfmt may only use plain {{name}} fields")
    check_copy_for(param.get("copy_for"), where)
    limits = param.get("limits")
    if limits is not None and not (
        isinstance(limits, list) and len(limits) == 2 and all(_is_number_or_none(v) for v in limits)
    ):
        raise UnsafeInput(f"{where}: limits must be [low, high]")
    shape = param.get("required_shape")
    if shape is not None and not (
        isinstance(shape, list) and all(v is None or type(v) is int for v in shape)
    ):
        raise UnsafeInput(f"{where}: required_shape must be a list of integers")


def _check_value(
    cls: str, param: dict[str, Any], where: str, constraint_funcs: frozenset[str]
) -> None:
    value = param.get("value")
    if cls == "ConstraintParameter":
        if not isinstance(value, str):
            raise UnsafeInput(f"{where}: a constraint's value must be an expression string")
        analyze_expression(value)
        func = param.get("constraint_func")
        if func is not None and func not in constraint_funcs:
            raise UnsafeInput(f"{where}: constraint_func {func!r} is not allowed")
        kwargs = param.get("constraint_kwargs", {})
        if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and _is_safe_scalar(v) for k, v in kwargs.items()
        ):
            raise UnsafeInput(f"{where}: constraint_kwargs must map names to plain values")
        addl = param.get("constraint_addl_vars", [])
        if not isinstance(addl, list) or not all(
            isinstance(t, str) and TWIG_RE.fullmatch(t) for t in addl
        ):
            raise UnsafeInput(f"{where}: constraint_addl_vars must be a list of twigs")
    elif cls == "DistributionParameter":
        validate_distl_dict(value, where)
    elif cls in _CHOICE_CLASSES:
        values = value if isinstance(value, list) else [value]
        choices = param.get("choices", [])
        if not isinstance(choices, list):
            raise UnsafeInput(f"{where}: choices must be a list")
        if cls == "UnitParameter":
            for item in [*values, *choices]:
                check_unit_string(item, f"{where}: unit")
        for item in [*values, *choices]:
            if item is not None and not is_quote_safe(item):
                raise UnsafeInput(
                    f"{where}: choice values must be printable strings without quotes or "
                    "backslashes"
                )
        if param.get("qualifier") == "use_server" and not {*values, *choices} <= {
            "none",
            "compute",
        }:
            raise UnsafeInput(f"{where}: use_server may only be 'none' or 'compute'")
    elif cls == "HierarchyParameter":
        if not isinstance(value, str) or not HIERARCHY_RE.fullmatch(value):
            raise UnsafeInput(f"{where}: invalid hierarchy")
    elif cls == "TwigParameter":
        if value is not None and (not isinstance(value, str) or not TWIG_RE.fullmatch(value)):
            raise UnsafeInput(f"{where}: invalid twig value")
    elif cls == "FloatArrayParameter" and isinstance(value, dict):
        validate_nparray_dict(value, where)
    elif cls == "DictParameter":
        check_plain_value(value, f"{where}: value", allow_dict=True, limits=BUNDLE_VALUES)
    else:
        check_plain_value(value, f"{where}: value", limits=BUNDLE_VALUES)


def _is_plain_format(text: str) -> bool:
    """Whether a ``str.format`` template only uses plain ``{name}`` fields.

    PHOEBE formats ``latexfmt`` with the parameter's tags; attribute or index fields
    (``{component.__class__}``) would read Python internals.
    """
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return False
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        if not FORMAT_FIELD_RE.fullmatch(field) or "{" in (spec or ""):
            return False
    return True


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_safe_scalar(value: Any) -> bool:
    """None, bool, number, or a short quote-safe string."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and is_quote_safe(value)
