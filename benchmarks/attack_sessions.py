"""Attacks on the session slots and on jobs: starting sessions until refused, the bomb
requests submitted as jobs, and a legitimately heavy job (which does get through) that
is cancelled. Part of benchmarks/attacks.py's ``Attacks``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from attack_base import BOMB_UNIT, AttackBase, Outcome
from attack_harness import REQUEST_TIMEOUT, Answer, cpu_seconds


class SessionAttacks(AttackBase):
    """``slot_grab``, ``job_bombs`` and ``heavy_job``: what an attacker can hold or keep
    busy with sessions and jobs."""

    async def slot_grab(self, max_starts: int = 8) -> Outcome:
        """Start sessions until the hub refuses (at most ``max_starts`` attempts)."""
        started: list[str] = []
        answers: list[Answer] = []
        known = set(cpu_seconds(self.hub.pid)[1])
        new_cpu = 0.0
        try:
            for _ in range(max_starts):
                answer = await self.attacker.post("/dash/start-session", timeout=120)
                answers.append(answer)
                if answer.status != 200:
                    break
                started.append(str(answer.json()["session_id"]))
            # what the new workers cost, before they go (starting PHOEBE is most of it)
            new_cpu = sum(t for pid, t in cpu_seconds(self.hub.pid)[1].items() if pid not in known)
        finally:
            for sid in started:
                await self.attacker.post(f"/dash/end-session/{sid}")
        refusal = answers[-1]
        held = 2 + len(started)  # the attacker's two sessions of the run, and these
        return Outcome(
            "/dash/start-session until refused",
            refusal,
            clear=refusal.refused,
            slowest=refusal.seconds,
            repeats=len(answers),
            extra={
                "sessions_held_at_refusal": held,
                "started_workers_cpu_s": round(new_cpu, 2),
                "start_s": [round(a.seconds, 3) for a in answers[:-1]],
                "statuses": [a.status for a in answers],
            },
        )

    async def _job(self, body: dict[str, Any], limit: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Submit a job and wait (at most ``limit``) for it to end; the job and timings."""
        t0 = time.perf_counter()
        submit = await self.attacker.post(f"/api/v1/sessions/{self.sid}/jobs", body)
        job = submit.json() if submit.status == 202 else None
        out: dict[str, Any] = {"submit": submit, "job": job, "ended_s": None}
        if not isinstance(job, dict):
            return out
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = await self.attacker.get(f"/api/v1/jobs/{job['job_id']}")
            state = got.json()
            if isinstance(state, dict) and state.get("status") in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                out.update(job=state, ended_s=time.perf_counter() - t0)
                break
            await asyncio.sleep(0.05)
        return out

    async def job_bombs(self) -> Outcome:
        """The unit bomb and the mesh bomb as jobs: each must end failed with a reason."""
        bodies: list[dict[str, Any]] = [
            {"command": "get_value", "twig": "period@binary", "unit": BOMB_UNIT},
            {"command": "run_compute", "ntriangles": 200_000},
        ]
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.window
        while not results or (time.monotonic() < deadline and len(results) < 40):
            for body in bodies:
                results.append(await self._job(body))
        ends = []
        clear = True
        for r in results:
            job = r["job"]
            ended = r["ended_s"]
            if isinstance(job, dict) and ended is not None:
                clear &= job.get("status") == "failed" and bool(job.get("error"))
                ends.append(ended)
            else:
                clear &= r["submit"].refused
                ends.append(r["submit"].seconds)
        first = results[0]
        job = first["job"] if isinstance(first["job"], dict) else {}
        shown = Answer(
            first["submit"].status,
            orjson.dumps({"status": job.get("status"), "error": job.get("error")})
            if job
            else first["submit"].body,
            first["ended_s"] or first["submit"].seconds,
        )
        return Outcome(
            "jobs: get_value unit bomb, run_compute ntriangles=200000",
            shown,
            clear=clear,
            slowest=max(ends),
            repeats=len(results),
            extra={"second_error": str((results[1]["job"] or {}).get("error"))[:120]},
        )

    async def heavy_job(self, points: int = 20_000, run_for: float = 5.0) -> Outcome:
        """A legitimate-sized compute that does get through as a job and keeps a core busy
        until ``job_timeout``; it runs for ``run_for`` seconds here and is then cancelled.
        The check is on the cancel (and on everybody else's pings meanwhile)."""
        grid = [i / points for i in range(points)]
        add = await self.attacker.send(
            self.sid,
            "add_dataset",
            kind="lc",
            dataset="attack_lc",
            compute_times=grid,
            overwrite=True,
        )
        submit = await self.attacker.post(
            f"/api/v1/sessions/{self.sid}/jobs", {"command": "run_compute"}
        )
        job = submit.json() if submit.status == 202 else {}
        status = None
        cancel = Answer(0, b"not submitted", 0.0)
        if isinstance(job, dict) and job.get("job_id"):
            await asyncio.sleep(run_for)
            state = (await self.attacker.get(f"/api/v1/jobs/{job['job_id']}")).json() or {}
            status = state.get("status")
            cancel = await self.attacker.post(f"/api/v1/jobs/{job['job_id']}/cancel")
        await self.attacker.send(self.sid, "remove_dataset", dataset="attack_lc")
        ended = cancel.json() if cancel.status == 200 else {}
        shown = Answer(
            cancel.status,
            orjson.dumps({"status": ended.get("status"), "error": ended.get("error")})
            if isinstance(ended, dict) and ended
            else cancel.body,
            cancel.seconds,
        )
        return Outcome(
            f"job run_compute of a {points}-point light curve, cancelled after {run_for:g} s",
            shown,
            clear=cancel.status == 200 and (ended or {}).get("status") == "cancelled",
            slowest=cancel.seconds,
            extra={
                "add_dataset": add.status,
                "submit": submit.status,
                "status_before_cancel": status,
                "note": "accepted: a legitimate-sized compute runs until job_timeout (3600 s)",
            },
        )
