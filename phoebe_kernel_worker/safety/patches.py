"""Run-time patches of PHOEBE: guards at its ``eval``/``exec``/process sites.

The command checks (:mod:`~phoebe_kernel_worker.safety.arguments`, ``edits``, ``runs``,
``ui_parameters``) and the bundle checks (:mod:`~phoebe_kernel_worker.safety.bundle`)
refuse bad input before it reaches PHOEBE.  These guards are the second line: whatever
path a value took into the bundle, PHOEBE cannot evaluate or execute it without
passing through one of the patched methods.

* ``ConstraintParameter.get_result`` (the only place constraint expressions are
  ``eval``-ed): both the ``{twig}`` form PHOEBE formats and evaluates and the internal
  safe-label form must pass the AST allow-list, and every variable must be a
  FloatParameter, a FloatArrayParameter or a ChoiceParameter whose current value is
  quote-safe; array and choice variables may only be call arguments where PHOEBE
  pastes values into the text.
* ``ConstraintParameter.set_value``: the new expression must pass the allow-list.
* ``CodeParameter`` (``exec`` of source text): every entry point raises.
* ``JobParameter`` and the bundle's detached-job script writers: raise (they write
  scripts and start processes).
* ``distl.from_dict``/``from_json`` and ``nparray.from_dict``: the allow-lists of
  :mod:`phoebe_kernel_worker.safety.object_dicts` (no ``distl.Function``, which imports and
  calls ``module.function`` paths; no oversized generated arrays).
* astropy's unit parser (``Unit("...")``, which every unit string reaches): the strict
  grammar of :func:`phoebe_kernel_worker.safety.units.check_unit_string`, so no numeric
  scale factor (``"10**1000000000 d"``) can pin a core in C code.

:func:`install_phoebe_guards` is called by
:class:`phoebe_kernel_worker.commands.PhoebeSession`; it is idempotent and affects the
whole process, which in the worker holds exactly one session.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from phoebe_kernel_worker.errors import UnsafeInput
from phoebe_kernel_worker.safety.expressions import (
    analyze_expression,
    check_constraint_variable,
    check_safe_labels,
)
from phoebe_kernel_worker.safety.object_dicts import validate_distl_dict, validate_nparray_dict
from phoebe_kernel_worker.safety.units import check_unit_string

__all__ = ["check_constraint_before_eval", "guards_installed", "install_phoebe_guards"]

_lock = threading.Lock()
_installed = False
_evaluating = threading.local()  # .param: the ConstraintParameter whose get_result runs


def guards_installed() -> bool:
    """Whether :func:`install_phoebe_guards` has run in this process."""
    return _installed


def install_phoebe_guards() -> None:
    """Patch PHOEBE's eval/exec/process entry points (see the module docstring)."""
    global _installed
    with _lock:
        if _installed:
            return
        from phoebe.dependencies import distl, nparray
        from phoebe.dependencies.distl import distl as distl_module
        from phoebe.frontend import bundle as bundle_module
        from phoebe.parameters import parameters

        constraint_cls = parameters.ConstraintParameter
        constraint_cls.get_result = _guard_get_result(constraint_cls.get_result)
        constraint_cls.get_value = _guard_get_value(constraint_cls.get_value)
        constraint_cls.set_value = _before(constraint_cls.set_value, _check_new_expression)

        for name in ("get_value", "set_value", "get_source_code"):
            setattr(parameters.CodeParameter, name, _refuse(name, "custom code is disabled"))
        parameters.CodeParameter.get_class_from_code = staticmethod(
            _refuse("get_class_from_code", "custom code is disabled")
        )
        parameters.JobParameter.__init__ = _refuse("JobParameter", "detached jobs are disabled")
        for name in (
            "_write_export_compute_script",
            "_write_export_solver_script",
            "export_compute",
            "export_solver",
        ):
            setattr(bundle_module.Bundle, name, _refuse(name, "exporting scripts is disabled"))

        guarded_distl = _guard_distl(distl_module.from_dict)
        distl_module.from_dict = guarded_distl
        distl.from_dict = guarded_distl
        guarded_distl_json = _guard_distl_json(distl_module.from_json)
        distl_module.from_json = guarded_distl_json
        distl.from_json = guarded_distl_json
        nparray.from_dict = _guard_nparray(nparray.from_dict)
        _guard_unit_parser()
        _installed = True


def check_constraint_before_eval(param: Any) -> None:
    """Raise :class:`UnsafeInput` unless PHOEBE may evaluate ``param`` (a ConstraintParameter).

    Checks the internal safe-label form of the expression and the class and value of
    every variable.  The ``{twig}`` form PHOEBE derives from it (and actually formats
    and evaluates) is checked by the ``get_value`` guard while ``get_result`` runs.
    """
    safe_form = param._value
    if safe_form is None:
        return
    all_vars = [*param._vars, *param._addl_vars]
    check_safe_labels({str(var.unique_label): str(var.safe_label) for var in all_vars})
    variables = {str(var.safe_label): var for var in all_vars}
    info = analyze_expression(safe_form, frozenset(variables))
    for label in set(info.twigs):
        check_constraint_variable(
            variables[label].get_parameter(),
            variables[label].user_label,
            in_arithmetic=label in info.other_twigs,
            has_calls=info.has_calls,
        )


def _check_new_expression(_param: Any, value: Any, *_args: Any, **_kwargs: Any) -> None:
    analyze_expression(str(value))


def _guard_get_result(method: Callable[..., Any]) -> Callable[..., Any]:
    """Check a constraint before PHOEBE evaluates it, and arm the ``get_value`` check."""

    @functools.wraps(method)
    def get_result(self: Any, *args: Any, **kwargs: Any) -> Any:
        check_constraint_before_eval(self)
        previous = getattr(_evaluating, "param", None)
        _evaluating.param = self
        try:
            return method(self, *args, **kwargs)
        finally:
            _evaluating.param = previous

    get_result.__phoebe_kernel_guard__ = True  # type: ignore[attr-defined]
    return get_result


def _guard_get_value(method: Callable[..., Any]) -> Callable[..., Any]:
    """Inside ``get_result``, check the ``{twig}`` text PHOEBE is about to format and eval."""

    @functools.wraps(method)
    def get_value(self: Any, *args: Any, **kwargs: Any) -> Any:
        expr = method(self, *args, **kwargs)
        if getattr(_evaluating, "param", None) is self and expr is not None:
            analyze_expression(expr)
        return expr

    get_value.__phoebe_kernel_guard__ = True  # type: ignore[attr-defined]
    return get_value


def _before(method: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    """Wrap ``method`` so ``check`` runs with the same arguments first."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        check(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    wrapper.__phoebe_kernel_guard__ = True  # type: ignore[attr-defined]
    return wrapper


def _refuse(name: str, reason: str) -> Callable[..., Any]:
    """A replacement for ``name`` that always raises :class:`UnsafeInput`."""

    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise UnsafeInput(f"{name}: {reason} in this service")

    refused.__name__ = name
    refused.__phoebe_kernel_guard__ = True  # type: ignore[attr-defined]
    return refused


def _guard_distl(from_dict: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(from_dict)
    def guarded(d: Any) -> Any:
        if isinstance(d, str):
            return _guarded_from_json(d, from_dict)
        validate_distl_dict(d, "distribution", strict_strings=False)
        return from_dict(d)

    return guarded


def _guard_distl_json(from_json: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(from_json)
    def guarded(j: Any) -> Any:
        if isinstance(j, str):
            import json

            validate_distl_dict(json.loads(j), "distribution", strict_strings=False)
        elif isinstance(j, dict):
            validate_distl_dict(j, "distribution", strict_strings=False)
        return from_json(j)

    return guarded


def _guarded_from_json(text: str, from_dict: Callable[[Any], Any]) -> Any:
    import json

    parsed = json.loads(text)
    validate_distl_dict(parsed, "distribution", strict_strings=False)
    return from_dict(parsed)


def _guard_nparray(from_dict: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(from_dict)
    def guarded(d: Any) -> Any:
        if isinstance(d, dict):
            validate_nparray_dict(d, "array", strict=False)
        return from_dict(d)

    return guarded


def _guard_unit_parser() -> None:
    """Check every string astropy is asked to parse as a unit against the strict grammar.

    ``Unit(s)`` goes through the metaclass ``__call__``; strings PHOEBE and astropy use
    themselves (``"solRad"``, ``"W / (nm m2)"``, ...) all fit the grammar.
    """
    from astropy.units import core as units_core

    meta = units_core._UnitMetaClass
    original = meta.__call__

    @functools.wraps(original)
    def call(cls: Any, s: Any = "", *args: Any, **kwargs: Any) -> Any:
        if isinstance(s, bytes):
            s = s.decode("ascii", "replace")
        if isinstance(s, str):
            check_unit_string(s, "unit")
        return original(cls, s, *args, **kwargs)

    call.__phoebe_kernel_guard__ = True  # type: ignore[attr-defined]
    meta.__call__ = call  # type: ignore[method-assign]
