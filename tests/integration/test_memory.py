"""Memory as private memory: what a worker reports (USS, PSS, RSS of its process tree),
what the hub shows and records as ``mem_used`` (USS), holds ``mem_limit`` on, and
exposes beside it (PSS and RSS in the admin API and ``/metrics``).

Forked test workers show the difference: each maps the fork server's template, so its
RSS counts pages it shares while its USS is only what it changed.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import Client
from ..waiting import async_wait_for
from .test_admin import metric

FORK = {"PhoebeSpawnerApp__spawner_class": "local-forkserver"}
MIB = 1024 * 1024


async def start(client: Client) -> str:
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid: str = resp.json()["session_id"]
    return sid


async def admin_view(client: Client, sid: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/admin/sessions/{sid}")  # mode none: the anonymous admin
    assert resp.status == 200, resp.body
    view: dict[str, Any] = resp.json()
    return view


async def test_a_forked_session_shows_its_private_memory_with_pss_and_rss_beside(make_hub):
    app, client = await make_hub(**FORK, SessionLimits__memory_cgroup=False)
    sid = await start(client)
    s = app.manager.sessions[sid]
    # the start already took the worker's first report
    assert 0 < s.mem_used < s.mem_rss
    mem = (await client.get("/dash/session-memory")).json()
    assert mem == {sid: s.mem_used}
    # shared template pages count in RSS (fully) and PSS (a share), not in USS
    assert 0 < s.mem_used < s.mem_pss < s.mem_rss
    view = await admin_view(client, sid)
    assert view["mem_used"] == round(s.mem_used, 3)
    assert view["mem_pss"] == round(s.mem_pss, 3)
    assert view["mem_rss"] == round(s.mem_rss, 3)
    listed = (await client.get("/dash/sessions")).json()[sid]
    assert listed["mem_used"] == round(s.mem_used, 3) and "mem_rss" not in listed

    text = (await client.get("/metrics")).body.decode()
    assert metric(text, "phoebe_spawner_sessions_memory_bytes", kind="uss") == pytest.approx(
        s.mem_used * MIB
    )
    assert metric(text, "phoebe_spawner_sessions_memory_bytes", kind="pss") == pytest.approx(
        s.mem_pss * MIB
    )
    assert metric(text, "phoebe_spawner_sessions_memory_bytes", kind="rss") == pytest.approx(
        s.mem_rss * MIB
    )
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_private_memory_grows_with_what_the_worker_allocates(make_hub):
    _, client = await make_hub(SessionLimits__memory_cgroup=False)
    sid = await start(client)
    before = (await client.post(f"/dash/session-memory/{sid}")).json()["mem_used"]
    resp = await client.send(sid, "allocate", mib=64)
    assert resp.json()["result"] == {"allocated_mib": 64}
    after = (await client.post(f"/dash/session-memory/{sid}")).json()["mem_used"]
    assert after - before >= 60
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_samples_record_private_memory_and_hold_the_limit_on_it(make_hub):
    """A limit between a forked worker's USS and its RSS: the kernel would not kill it
    (its group is charged its own pages), so the hub's sampling does not fail it either;
    what is recorded is the USS."""
    app, client = await make_hub(**FORK, SessionLimits__memory_cgroup=False)
    sid = await start(client)
    s = app.manager.sessions[sid]
    await s.sample()
    assert s.mem_rss - s.mem_used > 4  # room for a limit between the two
    s.spawner.mem_limit = int((s.mem_used + 2) * MIB)
    await app.manager.sample_all()
    assert s.status == "running"
    [(_, sampled)] = list(s.mem_history)
    assert sampled == s.mem_used

    async def recorded() -> list[dict[str, Any]] | None:
        rows = await app.store.get_metrics(sid)
        return rows or None

    rows = await async_wait_for(recorded, "the sample to be recorded", interval=0.1)
    assert [r["mem_used"] for r in rows] == [pytest.approx(sampled)]
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200


async def test_a_worker_reporting_only_rss_is_shown_by_it(make_hub):
    # a worker of an older release (a re-adopted one, an old container image) has no USS
    app, client = await make_hub()
    sid = await start(client)
    s = app.manager.sessions[sid]
    s.take_memory({"rss_mib": 123.5})
    assert (s.mem_used, s.mem_pss, s.mem_rss) == (123.5, 123.5, 123.5)
    assert (await client.post(f"/dash/end-session/{sid}")).status == 200
