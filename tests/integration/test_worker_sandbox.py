"""The worker sandbox end to end: a real PHOEBE worker behind the hub.

Each attack of issue 13 gets a ``success: false`` naming the reason, the worker stays
usable, and the hub's ``Spawner.worker_limits`` reach the worker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..conftest import Client

pytestmark = pytest.mark.phoebe


async def _send(client: Client, sid: str, command: str, **kwargs: Any) -> dict[str, Any]:
    resp = await client.post(f"/send/{sid}", {"command": command, **kwargs})
    assert resp.status == 200, resp.body
    body: dict[str, Any] = resp.json()
    return body


async def test_attacks_are_refused_and_the_worker_stays_usable(make_hub):
    _, client = await make_hub(
        phoebe=True, LocalProcessSpawner__worker_limits={"max_ntriangles": 2000}
    )
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]

    body = await _send(client, sid, "get_value", twig="period@binary", unit="10**1000000000 d")
    assert body["success"] is False and "is not a plain unit" in body["error"]

    body = await _send(client, sid, "run_compute", ntriangles=2001)
    assert body == {
        "success": False,
        "error": "run_compute: ntriangles=2001 is above this service's limit of 2000 "
        "(PHOEBE's default is 1500)",
    }

    bundle = json.loads((await _send(client, sid, "get_bundle"))["result"]["bundle"])
    for param in bundle:
        if param.get("context") == "component":
            param["visible_if"] = "hierarchy.save:x"
    body = await _send(client, sid, "load_bundle", bundle=json.dumps(bundle))
    assert body["success"] is False and "'hierarchy.save' is not allowed" in body["error"]

    body = await _send(client, sid, "get_value", twig="period@binary", unit="s")
    assert body == {"success": True, "result": 86400.0}
    assert (await _send(client, sid, "get_datasets"))["result"] == {"datasets": {}}
