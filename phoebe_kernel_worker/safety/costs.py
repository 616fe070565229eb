"""Cost caps: what one request may cost a worker in mesh size, mesh output and arrays.

A single client request can ask PHOEBE for far more memory than a worker has:
``run_compute(ntriangles=200000)`` ends in ``bad_alloc``, and a mesh dataset exposing
every column (``columns=["*"]``) at many times stores ``times x columns x triangles``
values.  :class:`~phoebe_kernel_worker.protocol.limits.WorkerLimits` holds the caps
(shared with the hub, which may override them per spawner through the ``limits`` dict
of the connection file, ``Spawner.worker_limits``, read by
:func:`phoebe_kernel_worker.factories.phoebe_session`); this module enforces them.

========================  =========  ==================================================
key                       default    what it bounds
========================  =========  ==================================================
``max_ntriangles``        5000       ``ntriangles`` of any component in any compute
                                     (PHOEBE's default is 1500), however it is set:
                                     ``run_compute``/``run_solver`` argument,
                                     ``set_value``, a loaded bundle
``max_mesh_values``       10000000   values a run may store or build per mesh: the sum
                                     over mesh datasets of times x (columns + 1), and
                                     the wavelengths of each lp dataset, times the
                                     triangles of all stars
``max_array_length``      1000000    elements of any one array in a command's
                                     arguments or in a loaded bundle (times, fluxes,
                                     ...), and a dataset's times x ``fti_oversample``
========================  =========  ==================================================

Why these defaults (measured: PHOEBE 2.5.4, default binary with a 101-point lc, one
process, peak RSS): 223 MiB at PHOEBE's 1500 triangles, 342 MiB at 5000, 740 MiB at
10000, 2.3 GiB at 20000; a mesh dataset with every column at 20 times and 5000
triangles added ~105 MiB, at 53 times (14.8 million mesh values) the run peaked at
773 MiB (about 30 bytes per mesh value).  So the defaults keep a worker near 650 MiB
at worst, well under the ~1 GiB a worker may take.

The checks here are called by :class:`phoebe_kernel_worker.commands.PhoebeSession`
(every command's arguments, and a pre-flight of every run) and by
:mod:`phoebe_kernel_worker.safety.bundle` (loaded bundles).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from phoebe_kernel_worker.errors import CommandError
from phoebe_kernel_worker.protocol.limits import WorkerLimits
from phoebe_kernel_worker.safety.values import is_ndarray

__all__ = ["check_array_lengths", "check_ntriangles", "check_run_cost"]

_SKIP = {"check_visible": False, "check_default": False}


def check_ntriangles(limits: WorkerLimits, value: Any, what: str) -> None:
    """Refuse an ``ntriangles`` value (an int, or a list of them) above ``limits``."""
    for item in value if isinstance(value, list) else [value]:
        if type(item) is not int:
            raise CommandError(f"{what}: ntriangles must be an integer")
        if item > limits.max_ntriangles:
            raise CommandError(
                f"{what}: ntriangles={item} is above this service's limit of "
                f"{limits.max_ntriangles} (PHOEBE's default is 1500)"
            )


def check_array_lengths(value: Any, limit: int, what: str, depth: int = 0) -> None:
    """Refuse any list (at any depth of ``value``) with more than ``limit`` elements, and
    any numpy array (from a request's buffers) with more than ``limit`` in all."""
    if depth > 8:
        return  # deeper nesting is refused by the per-command value checks
    if is_ndarray(value):
        if value.size > limit:
            raise CommandError(
                f"{what}: an array of {value.size} elements is above this service's limit "
                f"of {limit}"
            )
        return
    if isinstance(value, list | tuple):
        if len(value) > limit:
            raise CommandError(
                f"{what}: an array of {len(value)} elements is above this service's limit "
                f"of {limit}"
            )
        if value and all(type(v) is float or type(v) is int for v in value):
            return
        for item in value:
            check_array_lengths(item, limit, what, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            check_array_lengths(item, limit, what, depth + 1)


def check_run_cost(bundle: Any, kwargs: Mapping[str, Any], limits: WorkerLimits, what: str) -> None:
    """Pre-flight of ``run_compute``/``run_solver``: refuse runs whose meshes are too big.

    Looks at every compute of the bundle (a solver may run any of them) with the
    run's overrides (``ntriangles``, ``times``, ``fti_*``) applied: each star's
    ``ntriangles`` must be within ``max_ntriangles``; the mesh output (mesh datasets'
    times x columns) and the lp work (wavelengths) times all stars' triangles within
    ``max_mesh_values``; a dataset's times x ``fti_oversample`` (exposure-time
    oversampling) within ``max_array_length``.
    """
    override = kwargs.get("ntriangles")
    if override is not None:
        check_ntriangles(limits, override, what)
    triangles = 0
    for compute in bundle.filter(context="compute", **_SKIP).computes:
        params = bundle.filter(qualifier="ntriangles", compute=compute, **_SKIP).to_list()
        stars = [p for p in params if p.component != "_default"]
        values = []
        for param in stars:
            value = int(param.get_value()) if override is None else _largest(override)
            check_ntriangles(limits, value, f"{what}: {param.twig}")
            values.append(value)
        triangles = max(triangles, sum(values))
    _check_oversampling(bundle, kwargs, limits, what)
    if not triangles:
        return
    mesh_values = 0
    largest_lp = 0
    for dataset in bundle.filter(context="dataset", **_SKIP).datasets:
        ps = bundle.filter(dataset=dataset, context="dataset", **_SKIP)
        if ps.kind == "mesh":
            times = _count_times(bundle, ps, kwargs.get("times"), dataset)
            mesh_values += times * (_count_columns(ps) + 1)
        elif ps.kind == "lp":
            for param in ps.filter(qualifier="wavelengths", **_SKIP).to_list():
                largest_lp = max(largest_lp, _length(param.get_value()))
    for label, count in (("mesh times x columns", mesh_values), ("lp wavelengths", largest_lp)):
        if count * triangles > limits.max_mesh_values:
            raise CommandError(
                f"{what}: {label} ({count}) x {triangles} triangles is above this "
                f"service's limit of {limits.max_mesh_values} mesh values; use fewer "
                "times, columns, wavelengths or triangles"
            )


def _check_oversampling(
    bundle: Any, kwargs: Mapping[str, Any], limits: WorkerLimits, what: str
) -> None:
    """Exposure-time oversampling multiplies a dataset's times by ``fti_oversample``:
    the product must stay within ``max_array_length`` like any times array."""
    method_override = kwargs.get("fti_method")
    factor_override = kwargs.get("fti_oversample")
    for param in bundle.filter(qualifier="fti_oversample", context="compute", **_SKIP).to_list():
        if param.dataset in (None, "_default"):
            continue
        method = method_override
        if method is None:
            methods = bundle.filter(
                qualifier="fti_method", compute=param.compute, dataset=param.dataset, **_SKIP
            ).to_list()
            method = methods[0].get_value() if methods else None
        if method != "oversample":
            continue
        factor = factor_override if factor_override is not None else param.get_value()
        if type(factor) is not int:
            raise CommandError(f"{what}: fti_oversample must be an integer")
        times = _count_times(
            bundle,
            bundle.filter(dataset=param.dataset, context="dataset", **_SKIP),
            kwargs.get("times"),
            param.dataset,
        )
        if times * factor > limits.max_array_length:
            raise CommandError(
                f"{what}: {param.dataset} oversampled {factor} times at {times} times is "
                f"{times * factor} exposure points, above this service's limit of "
                f"{limits.max_array_length}"
            )


def _largest(value: Any) -> int:
    items = value if isinstance(value, list) else [value]
    return max((int(v) for v in items), default=0)


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 1


def _count_times(bundle: Any, ps: Any, override: Any, dataset: str) -> int:
    """Times a mesh dataset is computed at: its own (or the run's) times plus, when
    ``include_times`` is set, at most every other dataset's compute times."""
    if isinstance(override, dict):
        override = override.get(dataset)
    if override is not None:
        count = _length(override)
    else:
        count = sum(
            _length(p.get_value()) for p in ps.filter(qualifier="compute_times", **_SKIP).to_list()
        )
    include = ps.filter(qualifier="include_times", **_SKIP).to_list()
    if include and include[0].get_value():
        others = bundle.filter(qualifier="compute_times", context="dataset", **_SKIP).to_list()
        count += sum(_length(p.get_value()) for p in others if p.dataset != dataset)
    return count


def _count_columns(ps: Any) -> int:
    params = ps.filter(qualifier="columns", **_SKIP).to_list()
    if not params:
        return 0
    param = params[0]
    patterns: Iterable[str] = param.get_value()
    choices = list(getattr(param, "choices", []) or [])
    matched = {c for c in choices for p in patterns if fnmatch.fnmatch(c, p)}
    return len(matched) if choices else len(list(patterns))
