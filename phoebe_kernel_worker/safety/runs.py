"""Runs: the arguments of ``run_compute`` and ``run_solver``.

:class:`phoebe_kernel_worker.commands.PhoebeSession` calls these before a run.  A run
takes structural arguments (which compute, solver, datasets, times) and overrides of
the bundle's compute and solver options; the options a run may override are those the
live bundle has, minus :data:`RUN_DENIED_OPTIONS`.  What a run may cost is checked
separately (:func:`phoebe_kernel_worker.safety.costs.check_run_cost`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.safety.arguments import (
    check_bool,
    check_kwargs,
    check_label,
    check_positive_int,
    check_selector,
    check_selector_list,
)
from phoebe_kernel_worker.safety.patterns import is_quote_safe
from phoebe_kernel_worker.safety.values import check_plain_value

__all__ = ["RUN_DENIED_OPTIONS", "check_run_compute_kwargs", "check_run_solver_kwargs"]

_SKIP = {"check_visible": False, "check_default": False}

#: Compute/solver options that cannot be overridden per run.
RUN_DENIED_OPTIONS = frozenset({"use_server", "progress_every_niters"})


def check_run_compute_kwargs(bundle: Any, kwargs: Mapping[str, Any]) -> None:
    """Check ``run_compute(**kwargs)``: structural arguments plus compute-option overrides."""
    structural = {
        "compute": check_selector_list,
        "model": lambda v: check_label(v, "run_compute: model"),
        "dataset": check_selector_list,
        "times": _check_times,
        "overwrite": check_bool,
        "solution": check_selector,
        "sample_from": check_selector_list,
        "sample_num": check_positive_int,
        "sample_mode": check_selector,
        "skip_checks": check_bool,
        "progressbar": check_bool,
    }
    options = set(bundle.filter(context="compute", **_SKIP).qualifiers) - RUN_DENIED_OPTIONS
    _check_run_kwargs("run_compute", kwargs, structural, options)


def check_run_solver_kwargs(bundle: Any, kwargs: Mapping[str, Any]) -> str | None:
    """Check ``run_solver(**kwargs)``; return the solver label it will use, if known."""
    solver = kwargs.get("solver")
    if solver is not None:
        check_selector(solver)
    elif len(bundle.solvers) == 1:
        solver = bundle.solvers[0]
    structural = {
        "solver": check_selector,
        "solution": lambda v: check_label(v, "run_solver: solution"),
        "overwrite": check_bool,
        "skip_checks": check_bool,
        "progressbar": check_bool,
    }
    solver_ps = bundle.filter(context="solver", solver=solver, **_SKIP)
    options = set(solver_ps.qualifiers) | set(bundle.filter(context="compute", **_SKIP).qualifiers)
    options -= RUN_DENIED_OPTIONS
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
        if key in RUN_DENIED_OPTIONS:
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


def _check_times(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            check_selector(key)
            check_plain_value(item, "times")
    else:
        check_plain_value(value, "times")
