"""A command that PHOEBE (or the worker) refuses is diagnosable by an operator.

The user gets ``200 {"success": false, "error": ...}`` as the old server answered; the
hub logs one INFO line naming the session, the command and the error, stores the error
message in the command log, counts it in the metrics by command, and shows the
session's last error on the admin API.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def hub_log(log: logging.Logger) -> Iterator[list[str]]:
    """The messages ``log`` (the hub's, which does not propagate) emits at INFO."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def test_a_failed_command_is_logged_stored_and_shown(make_hub):
    app, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    with hub_log(app.log) as messages:
        resp = await client.send(sid, "get_value", twig="no_such@thing")
    assert resp.status == 200
    assert resp.json() == {"success": False, "error": "no parameter 'no_such@thing'"}

    assert [m for m in messages if "failed:" in m] == [
        f"session {sid} of anonymous: get_value failed: no parameter 'no_such@thing'"
    ]

    await app.store.flush_commands()
    rows = await app.store.list_commands(sid)
    assert [(r["command"], r["success"], r["error"]) for r in rows] == [
        ("get_value", False, "no parameter 'no_such@thing'")
    ]

    admin = (await client.get(f"/api/v1/admin/sessions/{sid}")).json()
    assert admin["last_error"] == "get_value: no parameter 'no_such@thing'"

    metrics = (await client.get("/metrics")).body.decode()
    assert 'phoebe_spawner_command_errors_total{command="get_value",kind="error"} 1.0' in metrics

    # a later success keeps the last error on show; a success is not logged as a failure
    with hub_log(app.log) as messages:
        assert (await client.send(sid, "ping")).json()["success"] is True
    assert not [m for m in messages if "failed:" in m]
    admin = (await client.get(f"/api/v1/admin/sessions/{sid}")).json()
    assert admin["last_error"] == "get_value: no parameter 'no_such@thing'"


async def test_a_long_error_is_cut(make_hub):
    app, client = await make_hub()
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    twig = "x" * 5000
    resp = await client.send(sid, "get_value", twig=twig)
    assert resp.json()["success"] is False
    await app.store.flush_commands()
    (row,) = await app.store.list_commands(sid)
    assert row["error"] == f"no parameter '{twig}'"[:1000]
