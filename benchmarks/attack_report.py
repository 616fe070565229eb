"""How benchmarks/attacks.py judges and reports each attack: the pings' statistics over
the attack's window, the check against the issue's limits, and the summary table.
"""

from __future__ import annotations

from typing import Any

from attack_base import Outcome
from attack_harness import Pinger
from common import percentiles

ANSWER_LIMIT = 2.0  # seconds: the "clear 4xx or success:false within 2 s"
PING_P99_LIMIT = 50.0  # ms


async def ping_stats(pinger: Pinger, name: str, t0: float, t1: float) -> dict[str, Any]:
    rows = await pinger.window(name, t0, t1)
    st = percentiles([r[1] for r in rows])
    worst = max(rows, key=lambda r: r[1], default=None)
    return {
        "n": st.get("n", 0),
        "p50_ms": st.get("p50_ms"),
        "p99_ms": st.get("p99_ms"),
        "max_ms": st.get("max_ms"),
        "worst_at_s": None if worst is None else round(worst[0] - t0, 2),
        "failed": sum(1 for r in rows if r[2] != 200),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def verdict(outcome: Outcome, pings: dict[str, dict[str, Any]]) -> str:
    misses = []
    if not outcome.clear:
        misses.append("unclear answer")
    if outcome.slowest > ANSWER_LIMIT:
        misses.append(f"answer {outcome.slowest:.1f} s")
    for name, st in pings.items():
        if st["failed"]:
            misses.append(f"{name} {st['failed']} pings failed")
        if st["p99_ms"] is None:
            misses.append(f"{name} no pings")
        elif st["p99_ms"] > PING_P99_LIMIT:
            misses.append(f"{name} p99 {st['p99_ms']:.0f} ms")
    return "ok" if not misses else "MISS: " + ", ".join(misses)


def table(
    rows: list[dict[str, Any]],
    idle: dict[str, dict[str, Any]],
    idle_end: dict[str, dict[str, Any]],
    lost: dict[str, Any],
) -> list[str]:
    v, o = idle["victim"], idle["other"]
    lines = [
        f"idle baseline: victim ping p50/p99 {v['p50_ms']:.2f}/{v['p99_ms']:.2f} ms "
        f"(n={v['n']}), attacker's other session {o['p50_ms']:.2f}/{o['p99_ms']:.2f} ms; "
        f"idle again at the end: victim {idle_end['victim']['p50_ms']:.2f}/"
        f"{idle_end['victim']['p99_ms']:.2f} ms",
        "",
        f"{'attack':24s} {'status':>6s} {'answer':44s} {'slowest':>8s} "
        f"{'victim p50/p99 ms':>18s} {'x idle':>11s} {'other p99':>9s}  check",
    ]
    for r in rows:
        vp, op = r["victim_ping"], r["other_ping"]
        answer = " ".join(r["answer"].split())[:44]
        lines.append(
            f"{r['case']:24s} {r['status']:>6d} {answer:44s} {r['slowest_s']:>7.3f}s "
            f"{_ms(vp['p50_ms']):>8s}/{_ms(vp['p99_ms']):<9s} "
            f"{_x(r['victim_p50_ratio']):>5s}/{_x(r['victim_p99_ratio']):<5s} "
            f"{_ms(op['p99_ms']):>9s}  {r['check']}"
        )
    misses = sum(1 for r in rows if r["check"] != "ok")
    lines += [
        "",
        f"{len(rows) - misses} ok, {misses} MISS (limits: answer <= {ANSWER_LIMIT:g} s, "
        f"ping p99 <= {PING_P99_LIMIT:g} ms)",
        f"nothing lost: victim's value kept {lost['victim_value_kept']}, sessions "
        f"{lost['session_status']}",
    ]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
