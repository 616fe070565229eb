"""The commands a PHOEBE kernel worker runs on its one bundle.

The worker's ZMQ main loop owns one :class:`PhoebeSession` and, for every request,
calls ``session.dispatch(name, kwargs)`` and replies with
``serialize.dumps({"success": True, "result": result})``; :class:`CommandError` (bad
command or argument) and any exception PHOEBE raises become
``{"success": false, "error": str(exc)}``.

The commands, their argument names and result shapes are those of the old
phoebe-server worker, so existing clients keep working.  Differences are limited to
what safety requires (see :mod:`phoebe_kernel_worker.safety`) and to cases where the
old code was wrong (results with several models or solutions, interrupted runs).

Only the names of :data:`phoebe_kernel_worker.protocol.COMMANDS` run (the table here
serves exactly those): :meth:`PhoebeSession.dispatch` looks the name up in an explicit
table and never uses ``getattr`` with client input.  PHOEBE is imported lazily, so
importing this module stays cheap.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from phoebe_kernel_worker.errors import CommandError, UnsafeInput
from phoebe_kernel_worker.progress import install_phoebe_progress
from phoebe_kernel_worker.protocol.limits import DEFAULT_LIMITS, WorkerLimits
from phoebe_kernel_worker.safety import edits, runs
from phoebe_kernel_worker.safety.arguments import (
    check_bool,
    check_filter_kwargs,
    check_number,
    check_uniqueid,
)
from phoebe_kernel_worker.safety.bundle import validate_bundle_json
from phoebe_kernel_worker.safety.costs import check_array_lengths, check_run_cost
from phoebe_kernel_worker.safety.ui_parameters import build_ui_parameters
from phoebe_kernel_worker.safety.units import check_unit_string

__all__ = ["CommandError", "PhoebeSession", "UnsafeInput", "list_passbands"]

log = logging.getLogger(__name__)

MORPHOLOGIES = ("detached", "semi-detached", "contact")
#: Largest bundle string ``load_bundle`` accepts (characters).
MAX_BUNDLE_JSON_CHARS = 256 * 1024 * 1024
UI_CONTEXT = "ui"

_SKIP = {"check_visible": False, "check_default": False}
_process_lock = threading.Lock()
_process_configured = False


def _phoebe() -> Any:
    """Import PHOEBE (once); the worker never lets PHOEBE fetch passbands online."""
    os.environ.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")
    import phoebe

    return phoebe


def configure_phoebe_process() -> None:
    """Put the process-wide PHOEBE state the worker relies on in place (idempotent).

    Called by :class:`PhoebeSession`: no multiprocessing pools, progress bars reported
    to the hub instead of drawn on stderr, the custom ``ui`` context registered, and the
    run-time guards of :mod:`phoebe_kernel_worker.safety.patches` installed.
    """
    global _process_configured
    with _process_lock:
        if _process_configured:
            return
        phoebe = _phoebe()
        from phoebe_kernel_worker.safety.patches import install_phoebe_guards

        phoebe.multiprocessing_off()
        install_phoebe_progress()  # progress to the hub, nothing drawn on stderr
        _ensure_ui_context()
        install_phoebe_guards()
        _process_configured = True


def _ensure_ui_context() -> None:
    contexts = _phoebe().parameters.parameters._contexts
    if UI_CONTEXT not in contexts:
        contexts.append(UI_CONTEXT)


def build_bundle(morphology: str) -> Any:
    """A fresh bundle for ``morphology`` set up like the old phoebe-server did.

    'detached' -> ``default_binary()``; 'semi-detached' -> the same plus the
    ``semidetached`` constraint on the secondary; 'contact' ->
    ``default_binary(contact_binary=True)``.  Then the masses are made free parameters
    (``q`` and ``sma`` become constrained) and a differential-corrections solver 'dc'
    is added.  Raises ValueError for any other morphology.
    """
    phoebe = _phoebe()
    if morphology == "detached":
        bundle = phoebe.default_binary()
    elif morphology == "semi-detached":
        bundle = phoebe.default_binary()
        bundle.add_constraint("semidetached", "secondary")
    elif morphology == "contact":
        bundle = phoebe.default_binary(contact_binary=True)
    else:
        raise ValueError(f"Unknown morphology: {morphology}")
    bundle.flip_constraint("mass@primary", solve_for="q@binary")
    bundle.flip_constraint("mass@secondary", solve_for="sma@binary")
    bundle.add_solver("differential_corrections", solver="dc")
    _ensure_ui_context()
    return bundle


def list_passbands() -> dict[str, Any]:
    """Installed passbands, flat and grouped by set; used by the hub's /system/passbands.

    Returns ``{"passbands": ["Bolometric:900-40000", "Johnson:V", ...],
    "grouped": {"Johnson": ["V", ...], ...}}`` (names split at the first ':').
    """
    names = sorted(str(name) for name in _phoebe().list_installed_passbands())
    grouped: dict[str, list[str]] = {}
    for name in names:
        pb_set, _, pb_name = name.partition(":")
        grouped.setdefault(pb_set, []).append(pb_name)
    return {"passbands": names, "grouped": {k: sorted(v) for k, v in grouped.items()}}


class PhoebeSession:
    """One client's PHOEBE bundle and the commands that act on it.

    Created once by the worker's main loop; ``session_dir`` is the directory private to
    this session (kept for the main loop, which runs the worker with it as working
    directory; no command reads or writes files).  The bundle starts as
    ``set_morphology('detached')``.  ``limits`` are the cost caps of
    :mod:`phoebe_kernel_worker.safety.costs` (from the connection file).
    """

    def __init__(
        self, session_dir: Path, bundle: Any = None, limits: WorkerLimits = DEFAULT_LIMITS
    ) -> None:
        self.session_dir = Path(session_dir)
        self.limits = limits
        configure_phoebe_process()
        #: ``bundle`` is a fresh default bundle prepared by the fork server's template
        self.bundle: Any = bundle if bundle is not None else build_bundle("detached")

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, name: str, kwargs: Mapping[str, Any] | None = None) -> Any:
        """Run command ``name`` with ``kwargs`` and return its JSON-ready result.

        Raises :class:`CommandError` for unknown commands and rejected arguments; PHOEBE's
        own exceptions propagate.
        """
        if not isinstance(name, str) or name not in _HANDLERS:
            raise CommandError(f"unknown command {name!r}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise CommandError(f"{name}: arguments must be an object with string keys")
        handler = _HANDLERS[name]
        check_array_lengths(kwargs, self.limits.max_array_length, name)
        kwargs = dict(kwargs)  # handlers may normalise arguments; never touch the caller's
        if kwargs or name not in _NO_REQUIRED_ARGS:  # a bare call to those always binds
            try:
                _SIGNATURES[name].bind(self, **kwargs)
            except TypeError as exc:
                raise CommandError(f"{name}: {exc}") from None
        return handler(self, **kwargs)

    # ------------------------------------------------------------------ bundle lifecycle

    def ping(self) -> dict[str, str]:
        """Liveness check used by the hub."""
        return {"status": "ready"}

    def set_morphology(self, morphology: str) -> dict[str, Any]:
        """Replace the bundle by a fresh one of ``morphology`` (see :func:`build_bundle`).

        The name is taken case-insensitively, as the old server did (PHOEBE Lab sends
        ``Detached``, ``Semi-detached``, ``Contact``).
        """
        if not isinstance(morphology, str):
            raise CommandError(f"{morphology!r}: morphology must be one of {list(MORPHOLOGIES)}")
        self.bundle = build_bundle(morphology.lower())
        return {}

    def new_bundle(self, morphology: str = "detached") -> dict[str, Any]:
        """Start over with a fresh bundle (same as :meth:`set_morphology`)."""
        return self.set_morphology(morphology)

    def get_bundle(self, **_ignored: Any) -> dict[str, str]:
        """The whole bundle as PHOEBE JSON text (with uniqueids), for saving on the client."""
        return {"bundle": json.dumps(self.bundle.to_json(incl_uniqueid=True))}

    def save_bundle(self, **_ignored: Any) -> dict[str, str]:
        """Same as :meth:`get_bundle` (the old server's name for it)."""
        return self.get_bundle()

    def load_bundle(self, bundle: str, **_ignored: Any) -> dict[str, Any]:
        """Replace the bundle by one from PHOEBE JSON text, after the safety checks.

        See :func:`phoebe_kernel_worker.safety.bundle.validate_bundle_json`.  The current
        bundle is kept when anything fails.
        """
        phoebe = _phoebe()
        if not isinstance(bundle, str):
            raise CommandError("load_bundle: bundle must be a JSON string")
        if len(bundle) > MAX_BUNDLE_JSON_CHARS:
            raise CommandError("load_bundle: bundle is too large")
        try:
            parsed = json.loads(bundle, object_pairs_hook=phoebe.utils.parse_json)
        except (ValueError, RecursionError) as exc:
            raise CommandError(f"load_bundle: bundle is not valid JSON ({exc})") from None
        validate_bundle_json(parsed, phoebe_version=str(phoebe.__version__), limits=self.limits)
        new_bundle = phoebe.load(parsed)
        _ensure_ui_context()
        self.bundle = new_bundle
        return {}

    # ------------------------------------------------------------------ parameters

    def get_parameter(self, **kwargs: Any) -> dict[str, Any]:
        """One parameter as ``to_dict()`` plus ``'Class'`` (its class name).

        Keywords PHOEBE's filter ignores (PHOEBE Lab's ``options=[...]``) are dropped.
        """
        kwargs = check_filter_kwargs("get_parameter", kwargs)
        param = self.bundle.get_parameter(**kwargs)
        result = dict(param.to_dict())
        result["Class"] = type(param).__name__
        return result

    def get_value(self, **kwargs: Any) -> Any:
        """``bundle.get_value(**kwargs)``: filter tags, ``unit``, ``t``, ``default``, ``expand``."""
        kwargs = check_filter_kwargs(
            "get_value",
            kwargs,
            extra={
                "unit": check_unit_string,
                "t": check_number,
                "default": None,
                "expand": check_bool,
            },
        )
        return self.bundle.get_value(**kwargs)

    def set_value(self, value: Any, **kwargs: Any) -> dict[str, Any]:
        """``bundle.set_value(value=value, **kwargs)`` after the checks of
        :func:`phoebe_kernel_worker.safety.edits.check_set_value`."""
        kwargs = edits.check_set_value(self.bundle, value, kwargs, self.limits)
        self.bundle.set_value(value=value, **kwargs)
        return {}

    def attach_parameters(self, parameters: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Attach client-defined parameters (context 'ui') and return their uniqueids.

        See :func:`phoebe_kernel_worker.safety.ui_parameters.build_ui_parameters` for the
        accepted spec keys.
        """
        params = build_ui_parameters(self.bundle, parameters)
        self.bundle._attach_params(params)
        return {"unique_ids": [p.uniqueid for p in params]}

    def get_uniqueid(self, twig: str, **kwargs: Any) -> str | None:
        """The uniqueid of the parameter ``twig`` names, or None when none/several match.

        A twig that matches one parameter plus the constraint of the same name (``q@binary``
        once ``q`` is constrained) resolves to the parameter.
        """
        kwargs = check_filter_kwargs("get_uniqueid", {"twig": twig, **kwargs})
        kwargs.pop("twig", None)
        try:
            return str(self._resolve(twig=twig, **kwargs).uniqueid)
        except ValueError:
            return None

    def update_uniqueid(self, twig: str, uniqueid: str | None = None, **kwargs: Any) -> str | None:
        """Set (with ``uniqueid``) or read (without) the uniqueid of the parameter ``twig``.

        Clients in the wild call this name both ways, so: with ``uniqueid`` (1-64
        characters of ``[A-Za-z0-9_-]``) the parameter's uniqueid becomes that value and
        is returned; without it the current uniqueid is returned like
        :meth:`get_uniqueid` (None when the twig matches no single parameter).  Refused
        for a uniqueid already in use and for parameters that take part in constraints,
        because PHOEBE's constraints refer to their variables by uniqueid.
        """
        kwargs = check_filter_kwargs("update_uniqueid", {"twig": twig, **kwargs})
        kwargs.pop("twig", None)
        if uniqueid is None:
            return self.get_uniqueid(twig, **kwargs)
        check_uniqueid(uniqueid)
        param = self._resolve(twig=twig, **kwargs)
        if uniqueid == param.uniqueid:
            return uniqueid
        if len(self.bundle.filter(uniqueid=uniqueid, **_SKIP)):
            raise CommandError(f"update_uniqueid: uniqueid {uniqueid!r} is already in use")
        if (
            param.context == "constraint"
            or getattr(param, "_in_constraints", None)
            or getattr(param, "_is_constraint", None)
        ):
            raise CommandError(
                "update_uniqueid: parameters used by constraints keep their uniqueid"
            )
        param.set_uniqueid(uniqueid)
        return uniqueid

    def is_parameter_constrained(
        self, twig: str | None = None, uniqueid: str | None = None, **kwargs: Any
    ) -> bool:
        """Whether the parameter is currently constrained (has ``constrained_by``)."""
        filters = {k: v for k, v in {"twig": twig, "uniqueid": uniqueid}.items() if v is not None}
        param = self._resolve(
            **check_filter_kwargs("is_parameter_constrained", {**filters, **kwargs})
        )
        if not hasattr(param, "constrained_by"):
            return False
        return bool(param.constrained_by)

    def _resolve(self, **filters: Any) -> Any:
        """``bundle.get_parameter(**filters)``, preferring a non-constraint match when a
        twig matches a parameter and its constraint."""
        try:
            return self.bundle.get_parameter(**filters)
        except ValueError:
            if "context" in filters:
                raise
            return self.bundle.exclude(context="constraint").get_parameter(**filters)

    # ------------------------------------------------------------------ datasets

    def add_dataset(self, **kwargs: Any) -> dict[str, Any]:
        """``bundle.add_dataset(**kwargs)``, e.g. ``kind="lc", compute_times=[...]``."""
        if isinstance(kwargs.get("kind"), str):
            kwargs["kind"] = kwargs["kind"].lower()  # PHOEBE accepts any case too
        edits.check_add_dataset_kwargs(self.bundle, kwargs)
        self.bundle.add_dataset(**kwargs)
        return {}

    def remove_dataset(self, dataset: str, **_ignored: Any) -> dict[str, Any]:
        """Remove a dataset together with the client's 'ui' parameters tagged with it."""
        check_filter_kwargs("remove_dataset", {"dataset": dataset})
        ui_params = self.bundle.filter(dataset=dataset, context=UI_CONTEXT, **_SKIP).to_list()
        for param in ui_params:
            self.bundle.remove_parameter(uniqueid=param.uniqueid, **_SKIP)
        self.bundle.remove_dataset(dataset)
        return {}

    def get_datasets(self, **_ignored: Any) -> dict[str, dict[str, dict[str, str]]]:
        """``{"datasets": {label: {"kind": kind}}}`` for every dataset."""
        return {
            "datasets": {
                ds: {"kind": self.bundle.filter(dataset=ds, context="dataset", **_SKIP).kind}
                for ds in self.bundle.datasets
            }
        }

    # ------------------------------------------------------------------ runs

    def run_compute(self, **kwargs: Any) -> dict[str, Any]:
        """Compute a model and return its arrays per dataset.

        ``{"model": {ds: {"times", "phases", "fluxes" (lc) | "rvs_primary",
        "rvs_secondary" (rv)}}}``; times and phases are the dataset's compute times and
        phases, model arrays are read from the model just computed (by label, so other
        models in the bundle do not interfere) and are omitted for datasets it does not
        contain.  With ``solution=`` the model holds samples; the first one is returned.
        An interrupted run leaves no partial model behind.
        """
        runs.check_run_compute_kwargs(self.bundle, kwargs)
        check_run_cost(self.bundle, kwargs, self.limits, "run_compute")
        bundle = self.bundle
        result_ps = self._run_atomically("model", lambda: bundle.run_compute(**kwargs))
        label = _single_label(result_ps, "models", kwargs.get("model", "latest"))
        first_sample = "solution" in kwargs
        model: dict[str, Any] = {}
        for ds in bundle.datasets:
            kind = bundle.filter(dataset=ds, context="dataset", **_SKIP).kind
            entry: dict[str, Any] = {
                "times": bundle.get_value("compute_times", dataset=ds, context="dataset"),
                "phases": bundle.get_value("compute_phases", dataset=ds, context="dataset"),
            }
            model_ps = bundle.filter(dataset=ds, model=label, context="model", **_SKIP)
            if kind == "lc" and "fluxes" in model_ps.qualifiers:
                entry["fluxes"] = _sample(
                    model_ps.get_value(qualifier="fluxes", **_SKIP), first_sample
                )
            elif kind == "rv":
                for component in ("primary", "secondary"):
                    rvs = model_ps.filter(qualifier="rvs", component=component, **_SKIP)
                    if len(rvs) == 1:
                        value = rvs.get_value(**_SKIP)
                        entry[f"rvs_{component}"] = _sample(value, first_sample)
            model[ds] = entry
        return {"model": model}

    def run_solver(self, **kwargs: Any) -> dict[str, Any]:
        """Run a solver and return ``{"solution": {"fit_parameters", "initial_values",
        "fitted_values"}}`` of the solution just produced (None for values the solver
        kind does not produce).  An interrupted run leaves no partial solution behind.
        """
        solver = runs.check_run_solver_kwargs(self.bundle, kwargs)
        check_run_cost(self.bundle, kwargs, self.limits, "run_solver")
        bundle = self.bundle
        run_kwargs = dict(kwargs)
        if (
            solver is not None
            and "progress_every_niters"
            in bundle.filter(context="solver", solver=solver, **_SKIP).qualifiers
        ):
            run_kwargs["progress_every_niters"] = 0  # progress files would land in the cwd
        result_ps = self._run_atomically("solution", lambda: bundle.run_solver(**run_kwargs))
        label = _single_label(result_ps, "solutions", kwargs.get("solution", "latest"))
        solution_ps = bundle.filter(solution=label, context="solution", **_SKIP)

        def value(qualifier: str) -> Any:
            if qualifier not in solution_ps.qualifiers:
                return None
            return solution_ps.get_value(qualifier=qualifier, **_SKIP)

        return {
            "solution": {
                "fit_parameters": value("fitted_twigs"),
                "initial_values": value("initial_values"),
                "fitted_values": value("fitted_values"),
            }
        }

    def _run_atomically(self, context: str, run: Callable[[], Any]) -> Any:
        """Run ``run`` and, if anything interrupts it, undo what it added to ``context``.

        PHOEBE's run_compute/run_solver only clean up after ``Exception``; on
        KeyboardInterrupt (the main loop's interrupt) they leave PHOEBE's global
        interactive-checks/constraints switches off and may leave a partly attached
        model or solution.  Both are repaired here before the exception propagates.
        """
        conf = _phoebe().conf
        saved_checks = conf._interactive_checks
        saved_constraints = conf._interactive_constraints
        before = {p.uniqueid for p in self.bundle.filter(context=context, **_SKIP).to_list()}
        try:
            return run()
        except BaseException:
            self._discard_new_parameters(context, before)
            conf._interactive_checks = saved_checks
            conf._interactive_constraints = saved_constraints
            if saved_constraints:
                try:
                    self.bundle.run_delayed_constraints()
                except Exception:
                    log.exception("run_delayed_constraints failed after an interrupted run")
            raise

    def _discard_new_parameters(self, context: str, before: set[str]) -> None:
        """Remove the models/solutions (and stray parameters) added since ``before``."""
        params = self.bundle.filter(context=context, **_SKIP).to_list()
        old_labels = {getattr(p, context) for p in params if p.uniqueid in before}
        new_params = [p for p in params if p.uniqueid not in before]
        remove = self.bundle.remove_model if context == "model" else self.bundle.remove_solution
        for label in {getattr(p, context) for p in new_params} - old_labels:
            try:
                remove(label)
            except Exception:
                log.exception("could not remove interrupted %s %r", context, label)
        for param in new_params:
            if len(self.bundle.filter(uniqueid=param.uniqueid, **_SKIP)):
                self.bundle.remove_parameter(uniqueid=param.uniqueid, **_SKIP)


def _single_label(result_ps: Any, attr: str, fallback: str) -> str:
    """The model/solution label of a run's returned ParameterSet (fallback: the kwarg)."""
    labels = getattr(result_ps, attr, None) or []
    return str(labels[0]) if len(labels) == 1 else str(fallback)


def _sample(value: Any, first_sample: bool) -> Any:
    """With a solution, models hold one row per sample: return the first."""
    if first_sample and getattr(value, "ndim", 0) >= 2:
        return value[0]
    return value


#: The command table: client-visible name -> handler.  Nothing else can be called; the
#: names are exactly :data:`phoebe_kernel_worker.protocol.COMMANDS` (tests/worker/test_commands.py).
_HANDLERS: dict[str, Callable[..., Any]] = {
    "ping": PhoebeSession.ping,
    "set_morphology": PhoebeSession.set_morphology,
    "change_morphology": PhoebeSession.set_morphology,
    "new_bundle": PhoebeSession.new_bundle,
    "get_parameter": PhoebeSession.get_parameter,
    "get_value": PhoebeSession.get_value,
    "set_value": PhoebeSession.set_value,
    "add_dataset": PhoebeSession.add_dataset,
    "remove_dataset": PhoebeSession.remove_dataset,
    "run_compute": PhoebeSession.run_compute,
    "run_solver": PhoebeSession.run_solver,
    "get_bundle": PhoebeSession.get_bundle,
    "save_bundle": PhoebeSession.save_bundle,
    "load_bundle": PhoebeSession.load_bundle,
    "get_datasets": PhoebeSession.get_datasets,
    "get_uniqueid": PhoebeSession.get_uniqueid,
    "update_uniqueid": PhoebeSession.update_uniqueid,
    "is_parameter_constrained": PhoebeSession.is_parameter_constrained,
    "attach_parameters": PhoebeSession.attach_parameters,
}
_SIGNATURES = {name: inspect.signature(handler) for name, handler in _HANDLERS.items()}
#: commands that need no argument (besides ``self``): called bare, they cannot mis-bind
_NO_REQUIRED_ARGS = frozenset(
    name
    for name, sig in _SIGNATURES.items()
    if all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in list(sig.parameters.values())[1:]
    )
)
