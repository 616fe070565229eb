""":class:`PhoebeClient`: the PHOEBE commands and jobs of the client.

Built on :class:`~._base.ClientBase` (connection, auth, sessions, checkpoints). Every command goes
to the current session unless it names another with ``session_id=``; with
``auto_session`` (the default) the first command starts a session when there is none.
Results come back in the worker's shapes, with lists of numbers as numpy arrays and
``{"value", "unit"}`` as astropy Quantities (``convert=False`` turns that off).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._base import ClientBase
from ._convert import (
    dumps,
    model_arrays,
    numeric_array,
    quantities,
    solution_arrays,
    split_quantity,
)
from ._jobs import JobCallback, JobRunner

__all__ = ["PhoebeClient"]

_MISSING: Any = object()


class PhoebeClient(ClientBase):
    """A PHOEBE session hub seen from Python: sessions, commands, jobs, checkpoints.

    ``PhoebeClient()`` inside a JupyterHub notebook configures itself from the
    environment; standalone pass the hub's URL and ``token=`` or ``email=`` and
    ``password=`` (nothing for a hub in auth mode ``none``). Use it as a context
    manager to end the sessions it started (``keep_sessions=True`` keeps them).

    Timeouts (seconds): ``connect_timeout`` (10), ``timeout`` for ordinary calls
    including session starts (300), ``command_timeout`` for ``/send`` commands (None:
    the hub's own timeout answers 504), ``stream_timeout`` for a silent job event
    stream before it is reopened (60). ``progress`` is the default for jobs' progress
    bars. Calls from several threads are safe but wait for each other: use one client
    per thread to run things in parallel. A session start the hub refuses with
    ``Retry-After`` (429 start rate, 503 busy) is sent again after it, ``start_retries``
    (5) times at most, never after a wait over ``max_retry_wait`` (30). Numpy arrays of
    1024 elements or more in a command's arguments go to the hub as typed buffers, not
    JSON, where the hub takes them (``binary_arrays=False``: always JSON).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        email: str | None = None,
        password: str | None = None,
        session_id: str | None = None,
        auto_session: bool = True,
        keep_sessions: bool = False,
        timeout: float | None = 300.0,
        connect_timeout: float | None = 10.0,
        command_timeout: float | None = None,
        stream_timeout: float = 60.0,
        progress: bool = True,
        convert: bool = True,
        auth_scheme: str | None = None,
        start_retries: int = 5,
        max_retry_wait: float = 30.0,
        binary_arrays: bool = True,
    ) -> None:
        super().__init__(
            url,
            token,
            email=email,
            password=password,
            session_id=session_id,
            auto_session=auto_session,
            keep_sessions=keep_sessions,
            timeout=timeout,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            auth_scheme=auth_scheme,
            start_retries=start_retries,
            max_retry_wait=max_retry_wait,
            binary_arrays=binary_arrays,
        )
        self.progress = progress
        self.convert = convert
        self.jobs = JobRunner(self._http, stream_timeout=stream_timeout)

    def _array_results(self, command: str) -> bool:
        """Arrays as typed buffers only where results are converted to numpy anyway."""
        return self.convert and super()._array_results(command)

    # ------------------------------------------------------------------ parameters

    def ping(self, *, session_id: str | None = None) -> dict[str, Any]:
        """``{"status": "ready"}`` when the session's worker is alive (answered at once,
        even while a job runs)."""
        result: dict[str, Any] = self.send("ping", session_id=session_id)
        return result

    def set_value(
        self,
        twig: str | None = None,
        value: Any = _MISSING,
        *,
        session_id: str | None = None,
        **filters: Any,
    ) -> dict[str, Any]:
        """Set a parameter: ``set_value("period@binary", 2.5)`` or with filters
        (``qualifier=``, ``uniqueid=``, ...). An astropy Quantity is sent with its unit;
        numpy arrays are fine."""
        if value is _MISSING:
            raise TypeError("set_value() needs a value")
        value, unit = split_quantity(value)
        if unit is not None:
            filters.setdefault("unit", unit)
        result: dict[str, Any] = self.send(
            "set_value", session_id=session_id, value=value, **_with_twig(twig, filters)
        )
        return result

    def get_value(
        self, twig: str | None = None, *, session_id: str | None = None, **filters: Any
    ) -> Any:
        """A parameter's value; numeric arrays as numpy arrays, quantities as Quantities."""
        value = self.send("get_value", session_id=session_id, **_with_twig(twig, filters))
        return numeric_array(quantities(value)) if self.convert else value

    def get_parameter(
        self, twig: str | None = None, *, session_id: str | None = None, **filters: Any
    ) -> dict[str, Any]:
        """A parameter's ``to_dict()`` plus ``"Class"``."""
        param: dict[str, Any] = self.send(
            "get_parameter", session_id=session_id, **_with_twig(twig, filters)
        )
        if self.convert and isinstance(param, dict):
            param = quantities(param)
            if "value" in param:
                param["value"] = numeric_array(param["value"])
        return param

    def is_parameter_constrained(
        self,
        twig: str | None = None,
        *,
        uniqueid: str | None = None,
        session_id: str | None = None,
        **filters: Any,
    ) -> bool:
        """Whether the parameter is computed by a constraint."""
        if uniqueid is not None:
            filters["uniqueid"] = uniqueid
        return bool(
            self.send(
                "is_parameter_constrained", session_id=session_id, **_with_twig(twig, filters)
            )
        )

    def get_uniqueid(self, twig: str, *, session_id: str | None = None) -> str | None:
        """The parameter's uniqueid (None when the twig names no single parameter)."""
        uid: str | None = self.send("get_uniqueid", session_id=session_id, twig=twig)
        return uid

    def update_uniqueid(
        self, twig: str, uniqueid: str | None = None, *, session_id: str | None = None
    ) -> str | None:
        """Set the parameter's uniqueid (or read it, without ``uniqueid``)."""
        kwargs: dict[str, Any] = {"twig": twig}
        if uniqueid is not None:
            kwargs["uniqueid"] = uniqueid
        uid: str | None = self.send("update_uniqueid", session_id=session_id, **kwargs)
        return uid

    def attach_parameters(
        self, parameters: Iterable[dict[str, Any]], *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Attach ``ui`` parameters (specs with ``ptype``, ``qualifier``, ``value``, ...);
        returns ``{"unique_ids": [...]}``."""
        result: dict[str, Any] = self.send(
            "attach_parameters", session_id=session_id, parameters=list(parameters)
        )
        return result

    # ------------------------------------------------------------------ bundle

    def set_morphology(self, morphology: str, *, session_id: str | None = None) -> dict[str, Any]:
        """Replace the bundle by a fresh ``detached``, ``semi-detached`` or ``contact`` one."""
        result: dict[str, Any] = self.send(
            "set_morphology", session_id=session_id, morphology=morphology
        )
        return result

    def change_morphology(
        self, morphology: str, *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Same as :meth:`set_morphology` (a name clients in the wild use)."""
        return self.set_morphology(morphology, session_id=session_id)

    def new_bundle(
        self, morphology: str = "detached", *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Start over with a fresh bundle."""
        result: dict[str, Any] = self.send(
            "new_bundle", session_id=session_id, morphology=morphology
        )
        return result

    def get_bundle(self, *, session_id: str | None = None) -> dict[str, str]:
        """The bundle as PHOEBE JSON text: ``{"bundle": "<json>"}``."""
        result: dict[str, str] = self.send("get_bundle", session_id=session_id)
        return result

    def save_bundle(
        self, path: str | os.PathLike[str] | None = None, *, session_id: str | None = None
    ) -> dict[str, str]:
        """Like :meth:`get_bundle`; with ``path`` also writes the JSON text to that local
        file (loadable with ``phoebe.load(path)`` or :meth:`load_bundle`)."""
        result: dict[str, str] = self.send("save_bundle", session_id=session_id)
        if path is not None:
            Path(path).write_text(result["bundle"], encoding="utf-8")
        return result

    def load_bundle(
        self,
        bundle: str | os.PathLike[str] | dict[str, str],
        *,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """Replace the bundle: PHOEBE JSON text, a local file path (``pathlib.Path``), or
        what :meth:`get_bundle` returned."""
        if isinstance(bundle, dict):
            text = bundle["bundle"]
        elif isinstance(bundle, os.PathLike):
            text = Path(bundle).read_text(encoding="utf-8")
        else:
            text = bundle
        result: dict[str, Any] = self.send("load_bundle", session_id=session_id, bundle=text)
        return result

    # ------------------------------------------------------------------ datasets

    def add_dataset(
        self, kind: str | None = None, *, session_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Add a dataset: ``add_dataset("lc", compute_times=np.linspace(0, 1, 101))``."""
        if kind is not None:
            kwargs["kind"] = kind
        result: dict[str, Any] = self.send("add_dataset", session_id=session_id, **kwargs)
        return result

    def remove_dataset(self, dataset: str, *, session_id: str | None = None) -> dict[str, Any]:
        """Remove a dataset (and the ``ui`` parameters tagged with it)."""
        result: dict[str, Any] = self.send("remove_dataset", session_id=session_id, dataset=dataset)
        return result

    def get_datasets(self, *, session_id: str | None = None) -> dict[str, Any]:
        """``{"datasets": {label: {"kind": kind}}}``."""
        result: dict[str, Any] = self.send("get_datasets", session_id=session_id)
        return result

    # ------------------------------------------------------------------ long runs

    def run_compute(
        self,
        *,
        session_id: str | None = None,
        progress: bool | None = None,
        callback: JobCallback | None = None,
        show_output: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Compute the model as a job, with a progress bar; Ctrl-C cancels it.

        Returns ``{"model": {dataset: {"times", "phases", "fluxes" | "rvs_primary",
        "rvs_secondary"}}}`` with numpy arrays. See :meth:`run_job` for ``progress``,
        ``callback`` and ``show_output``.
        """
        result = self.run_job(
            "run_compute",
            session_id=session_id,
            progress=progress,
            callback=callback,
            show_output=show_output,
            **kwargs,
        )
        return model_arrays(result) if self.convert else result

    def run_solver(
        self,
        *,
        session_id: str | None = None,
        progress: bool | None = None,
        callback: JobCallback | None = None,
        show_output: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run a solver as a job (default solver ``dc``); returns ``{"solution":
        {"fit_parameters", "initial_values", "fitted_values"}}`` with arrays."""
        result = self.run_job(
            "run_solver",
            session_id=session_id,
            progress=progress,
            callback=callback,
            show_output=show_output,
            **kwargs,
        )
        return solution_arrays(result) if self.convert else result

    def run_job(
        self,
        command: str,
        *,
        session_id: str | None = None,
        progress: bool | None = None,
        callback: JobCallback | None = None,
        show_output: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run any command as a job and wait for its result.

        ``progress`` shows a progress bar (default: the client's ``progress``);
        ``callback`` is called with every event of the job (an ``SSEEvent`` with
        ``id``, ``event`` and ``data``: ``progress`` events carry ``fraction`` and
        ``message``); ``show_output`` prints the worker's output lines. Ctrl-C (or a
        KeyboardInterrupt raised by the callback) cancels the job on the worker, waits
        for the hub to confirm, and raises ComputationCancelled; the session stays
        usable and its bundle unchanged.
        """
        job = self.submit_job(command, session_id=session_id, **kwargs)
        return self.wait_job(
            job["job_id"],
            command=command,
            progress=progress,
            callback=callback,
            show_output=show_output,
        )

    def submit_job(
        self, command: str, *, session_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Queue a command as a job without waiting; returns the job (``job_id``, ...)."""
        sid = self._sid(session_id)
        job: dict[str, Any] = self._http.request(
            "POST", f"api/v1/sessions/{sid}/jobs", dumps({**kwargs, "command": command})
        ).body
        return job

    def wait_job(
        self,
        job_id: str,
        *,
        command: str | None = None,
        progress: bool | None = None,
        callback: JobCallback | None = None,
        show_output: bool = False,
    ) -> Any:
        """Follow a job until it ends and return its result (see :meth:`run_job`)."""
        return self.jobs.wait(
            job_id,
            command or "job",
            progress=self.progress if progress is None else progress,
            callback=callback,
            show_output=show_output,
        )

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job: ``status`` (queued, running, succeeded, failed, cancelled), progress..."""
        job: dict[str, Any] = self._http.request("GET", f"api/v1/jobs/{job_id}").body
        return job

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; returns it once it has ended (Conflict if it had already)."""
        job: dict[str, Any] = self._http.request(
            "POST", f"api/v1/jobs/{job_id}/cancel", timeout=self.jobs.cancel_timeout
        ).body
        return job

    def job_result(self, job_id: str) -> Any:
        """The worker's reply to a finished job: ``{"success", "result" | "error"}``."""
        return self._http.request("GET", f"api/v1/jobs/{job_id}/result").body

    def list_jobs(
        self, *, session_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Your jobs, newest first (optionally of one session / with some statuses)."""
        query = _query(session_id=session_id, status=status, limit=limit)
        jobs: list[dict[str, Any]] = self._http.request("GET", f"api/v1/jobs{query}").body["jobs"]
        return jobs


def _with_twig(twig: str | None, filters: dict[str, Any]) -> dict[str, Any]:
    if twig is not None:
        filters["twig"] = twig
    return filters


def _query(**params: Any) -> str:
    from urllib.parse import urlencode

    pairs = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(pairs) if pairs else ""
