"""Issue 13's attacks against a hub with default settings, with other users' pings measured.

Starts ``phoebe-spawner`` as a subprocess with its defaults (auth mode jwt with a generated
``PHOEBE_SPAWNER_JWT_SECRET``, the default spawner, real PHOEBE workers); only the port and
a temporary data directory are set. Registers an attacker and a victim, starts a session
for each (and a second one for the attacker), then runs every attack class of issue 13
through the public HTTP API against the attacker's first session:

* unit strings that made astropy compute ``10**1000000000``: ``get_value`` ``unit``,
  ``set_value`` ``unit``, ``attach_parameters`` ``default_unit``, a bundle's
  ``default_unit`` (``load_bundle`` of the session's own ``get_bundle``, edited);
* mesh cost: ``run_compute ntriangles=200000``, ``set_value`` on a compute's
  ``ntriangles``, a mesh dataset with ``columns: ["*"]`` and many times;
* a ``visible_if`` that names a hierarchy method (``hierarchy.save:x``) in a bundle;
* two ``command`` keys in a ``/send`` body over 256 KiB;
* the session-slot grab (starts until refused);
* jobs that would pin a core (the unit bomb and the mesh as jobs; a legitimately heavy
  compute, which does get through, cancelled after a while);
* half-open connections from many loopback addresses, and more than the per-address cap
  from one address;
* a failed-login burst against the victim from one address, then the victim's own
  login from another; the same from 20 addresses at once, the victim logging in
  meanwhile (each failure costs an Argon2 check in the hub).

Meanwhile a process of its own pings the victim's session and the attacker's second
session every ``--interval`` (20 ms). Each attack is repeated for at least ``--window``
seconds (bounded in count) so its ping window holds enough samples.
One JSON line per attack: the first answer's status and first 120 characters, the
slowest answer's time, and the pings' p50/p99 during the attack against an idle baseline
of the same run. The summary's check column says ``ok`` or ``MISS`` against: a clear 4xx
or ``success: false`` (or a job ending with a clear reason) within 2 s, and ping p99
≤ 50 ms (no failed ping) for the victim and the attacker's other session.

    PYTHONPATH=. .venv/bin/python benchmarks/attacks.py [--only unit_get_value,...]

It reports and does not assert: the exit code is 0 with misses, 1 if the hub (or the
run's accounts and sessions) did not start. Everything is stopped at the end and the
data directory removed. ``--hub-arg`` passes an option to the hub (recorded in the
``config`` line).

The parts: ``attack_harness.py`` (the hub, the HTTP client and accounts, the pinger),
``attack_base.py`` (what every attack shares), the attacks by what they attack
(``attack_worker_input.py``, ``attack_sessions.py``, ``attack_connections.py``,
``attack_logins.py``) and ``attack_report.py`` (the check and the summary table); this
script runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from typing import Any

from attack_base import Outcome
from attack_connections import ConnectionAttacks
from attack_harness import (
    BENCH,
    REQUEST_TIMEOUT,
    Answer,
    HubDidNotStart,
    HubProcess,
    Pinger,
    User,
    cpu_seconds,
    default_hub,
    register,
)
from attack_logins import LoginAttacks
from attack_report import ping_stats, ratio, table, verdict
from attack_sessions import SessionAttacks
from attack_worker_input import WorkerInputAttacks
from common import emit, machine, summary

ORDER = [
    "unit_get_value",
    "unit_set_value",
    "unit_attach_parameters",
    "unit_bundle",
    "mesh_run_compute",
    "mesh_set_value",
    "mesh_columns",
    "visible_if",
    "duplicate_command",
    "job_bombs",
    "heavy_job",
    "slot_grab",
    "connection_flood",
    "login_burst",
    "login_spray",
]


class Attacks(WorkerInputAttacks, SessionAttacks, ConnectionAttacks, LoginAttacks):
    """Every attack of the run, a method each, named as in :data:`ORDER`; :func:`run`
    calls them one after the other by name."""


# -- the run ----------------------------------------------------------------------------


async def run(hub: HubProcess, args: Any) -> list[str]:
    attacker = await register(hub.url, f"mallory-{secrets.token_hex(3)}@example.org")
    victim = await register(hub.url, f"victor-{secrets.token_hex(3)}@example.org")
    pinger: Pinger | None = None
    try:
        try:
            sids = {"attacker": await attacker.start(), "attacker_other": await attacker.start()}
            sids["victim"] = await victim.start()
        except RuntimeError as e:
            raise HubDidNotStart(f"the run's sessions did not start: {e}") from None
        hub.note_descendants()
        # something of the victim's that must survive every attack
        await victim.send(sids["victim"], "set_value", twig="period@binary", value=1.2345)
        targets = {
            "victim": (victim.token, sids["victim"]),
            "other": (attacker.token, sids["attacker_other"]),
        }
        pinger = Pinger(hub.url, targets, args.interval)
        pinger.start()
        await asyncio.sleep(1.0)  # warm-up, not counted
        t0 = time.monotonic()
        await asyncio.sleep(args.idle)
        t1 = time.monotonic()
        idle = {name: await ping_stats(pinger, name, t0, t1) for name in targets}
        emit(BENCH, "idle", **{f"{n}_ping": st for n, st in idle.items()})

        attacks = Attacks(hub, attacker, victim, sids, args.window)
        only = args.only.split(",") if args.only else ORDER
        rows: list[dict[str, Any]] = []
        for name in only:
            await asyncio.sleep(args.settle)
            t_start = time.monotonic()
            cpu_before = cpu_seconds(hub.pid)
            try:
                outcome: Outcome = await getattr(attacks, name)()
            except Exception as exc:  # report, and go on with the next attack
                outcome = Outcome(
                    "(the benchmark failed)", Answer(0, repr(exc).encode(), 0), False, 0
                )
            t_end = time.monotonic()
            cpu_after = cpu_seconds(hub.pid)
            hub.note_descendants()
            pings = {n: await ping_stats(pinger, n, t_start, t_end) for n in targets}
            check = verdict(outcome, pings)
            if outcome.answer.status == 0 or outcome.slowest > REQUEST_TIMEOUT:
                # bound the damage of an attack that got through: a fresh attacked session
                await attacker.post(f"/dash/end-session/{sids['attacker']}")
                sids["attacker"] = await attacker.start()
            rows.append(
                emit(
                    BENCH,
                    name,
                    entry=outcome.entry,
                    status=outcome.answer.status,
                    answer=outcome.answer.head(),
                    answer_s=round(outcome.answer.seconds, 4),
                    slowest_s=round(outcome.slowest, 4),
                    repeats=outcome.repeats,
                    attack_s=round(t_end - t_start, 3),
                    victim_ping=pings["victim"],
                    other_ping=pings["other"],
                    victim_p50_ratio=ratio(pings["victim"]["p50_ms"], idle["victim"]["p50_ms"]),
                    victim_p99_ratio=ratio(pings["victim"]["p99_ms"], idle["victim"]["p99_ms"]),
                    check=check,
                    hub_cpu_s=round(cpu_after[0] - cpu_before[0], 2),
                    workers_cpu_s=round(
                        sum(t - cpu_before[1].get(pid, 0.0) for pid, t in cpu_after[1].items()),
                        2,
                    ),
                    **outcome.extra,
                )
            )
        await asyncio.sleep(args.settle)
        t0 = time.monotonic()
        await asyncio.sleep(args.idle)
        t1 = time.monotonic()
        idle_end = {name: await ping_stats(pinger, name, t0, t1) for name in targets}
        emit(BENCH, "idle_end", **{f"{n}_ping": st for n, st in idle_end.items()})
        pinger.stop()
        lost = await integrity(attacker, victim, sids)
        emit(BENCH, "integrity", **lost)
        return table(rows, idle, idle_end, lost)
    finally:
        if pinger is not None and pinger.proc.is_alive():
            pinger.stop()
        await attacker.http.close()
        await victim.http.close()


async def integrity(attacker: User, victim: User, sids: dict[str, str]) -> dict[str, Any]:
    """Nothing lost: the victim's value, every session of the run still running."""
    value = (await victim.send(sids["victim"], "get_value", twig="period@binary")).json()
    mine = (await attacker.get("/dash/sessions")).json() or {}
    theirs = (await victim.get("/dash/sessions")).json() or {}
    statuses = {
        role: (theirs if role == "victim" else mine).get(sid, {}).get("status")
        for role, sid in sids.items()
    }
    return {
        "victim_value_kept": isinstance(value, dict) and value.get("result") == 1.2345,
        "session_status": statuses,
        "attacker_sessions_listed": len(mine),
    }


async def main() -> int:
    # no --url: the point is a hub with default settings, started here
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated attacks of: {','.join(ORDER)}")
    p.add_argument("--spawner", default=None, help="a spawner other than the hub's default")
    p.add_argument("--window", type=float, default=3.0, help="seconds each attack repeats")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle baseline")
    p.add_argument("--settle", type=float, default=1.0, help="pause between attacks")
    p.add_argument("--interval", type=float, default=0.02, help="ping interval")
    p.add_argument("--hub-log", default=None, help="keep a copy of the hub's log here")
    p.add_argument(
        "--hub-arg",
        action="append",
        default=[],
        help="an extra hub option (repeatable; the run is then no longer of default settings)",
    )
    args = p.parse_args()
    unknown = set(filter(None, args.only.split(","))) - set(ORDER)
    if unknown:
        p.error(f"unknown attacks: {sorted(unknown)}")
    emit(BENCH, "machine", **machine())
    try:
        with default_hub(args.spawner, args.hub_log, args.hub_arg) as hub:
            emit(
                BENCH,
                "config",
                spawner=args.spawner or "(default)",
                auth_mode="jwt",
                extra_hub_args=args.hub_arg,
            )
            lines = await run(hub, args)
    except HubDidNotStart as exc:
        print(exc, file=sys.stderr)
        return 1
    summary("attacks against a default hub (issue 13)", lines)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
