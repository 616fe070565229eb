"""End to end with real PHOEBE workers, spoken as an old phoebe-server client would.

Plain HTTP: JSON bodies with ``Content-Type: application/json``, ``Authorization:
Bearer <token>`` after register/login, ``start-session`` with metadata or no body,
``/send`` with ``{"command": ..., ...}``, ``end-session`` with no body.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ..conftest import Client, register

pytestmark = pytest.mark.phoebe

TIMES = [round(float(t), 4) for t in np.linspace(0, 1, 21)]


async def send(client: Client, sid: str, command: str, token: str | None, **kwargs: Any) -> Any:
    resp = await client.post(f"/send/{sid}", {"command": command, **kwargs}, token=token)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["success"] is True, body
    return body["result"]


async def old_client_flow(client: Client, token: str | None, start_body: Any) -> dict[str, Any]:
    """The flow of the issue's 'done means', step by step; returns what it computed."""
    if start_body is None:
        resp = await client.post("/dash/start-session", token=token)  # no body at all
    else:
        resp = await client.post("/dash/start-session", start_body, token=token)
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]

    assert await send(client, sid, "set_value", token, twig="period@binary", value=0.56) == {}
    assert await send(client, sid, "get_value", token, twig="period@binary") == 0.56
    mass = await send(client, sid, "get_value", token, twig="mass@primary")
    assert isinstance(mass, float) and mass > 0
    assert (
        await send(
            client, sid, "add_dataset", token, kind="lc", compute_times=TIMES, overwrite=True
        )
        == {}
    )
    model = (await send(client, sid, "run_compute", token))["model"]
    fluxes = model["lc01"]["fluxes"]
    assert len(fluxes) == len(TIMES) and all(f > 0 for f in fluxes)
    assert model["lc01"]["times"] == TIMES and len(model["lc01"]["phases"]) == len(TIMES)

    # turn the model into 'observations' and fit one parameter with the dc solver
    await send(client, sid, "set_value", token, twig="times@lc01@dataset", value=TIMES)
    await send(
        client,
        sid,
        "set_value",
        token,
        twig="fluxes@lc01@dataset",
        value=[f * 1.01 for f in fluxes],
    )
    await send(
        client, sid, "set_value", token, twig="sigmas@lc01@dataset", value=[0.01] * len(TIMES)
    )
    await send(client, sid, "set_value", token, twig="fit_parameters@dc", value=["teff@primary"])
    solution = (await send(client, sid, "run_solver", token))["solution"]
    assert solution["fit_parameters"] == ["teff@primary@star@component"]
    assert len(solution["initial_values"]) == len(solution["fitted_values"]) == 1

    bundle = (await send(client, sid, "get_bundle", token))["bundle"]
    assert isinstance(bundle, str) and "period" in bundle
    await send(client, sid, "set_value", token, twig="period@binary", value=0.9)
    assert await send(client, sid, "load_bundle", token, bundle=bundle) == {}
    assert await send(client, sid, "get_value", token, twig="period@binary") == 0.56

    attached = await send(
        client,
        sid,
        "attach_parameters",
        token,
        parameters=[
            {
                "ptype": "choice",
                "qualifier": "backend",
                "value": "PHOEBE",
                "choices": ["PHOEBE", "PHOEBAI"],
                "description": "Backend to use for computations",
                "context": "ui",
            }
        ],
    )
    assert len(attached["unique_ids"]) == 1
    assert await send(client, sid, "get_value", token, twig="backend@ui") == "PHOEBE"
    assert await send(client, sid, "is_parameter_constrained", token, twig="q@binary") is True
    assert await send(client, sid, "get_datasets", token) == {"datasets": {"lc01": {"kind": "lc"}}}

    resp = await client.post(f"/dash/end-session/{sid}", token=token)  # no body
    assert resp.status == 200 and resp.json() == {"success": True}
    return {"fluxes": fluxes}


async def test_old_client_flow_mode_none(make_hub):
    _, client = await make_hub(phoebe=True)
    await old_client_flow(client, None, {"project_name": "Algol", "ui_version": "1.0"})


async def test_old_client_flow_mode_jwt(make_hub):
    _, client = await make_hub(auth_mode="jwt", phoebe=True)
    token = await register(client, "astro@example.org")
    # the registration's token is a working one for the same user
    me = await client.get("/auth/me", token=token)
    assert me.status == 200 and me.json()["email"] == "astro@example.org", me.body
    login = await client.post(
        "/auth/login", {"email": "astro@example.org", "password": "correct horse battery"}
    )
    assert login.status == 200
    result = await old_client_flow(client, login.json()["access_token"], None)
    expected = in_process_fluxes()
    assert np.array_equal(np.array(result["fluxes"]), expected), (
        "hub result differs from in-process PHOEBE"
    )


def in_process_fluxes() -> np.ndarray:
    """The same PHOEBE calls made in this process."""
    import phoebe

    b = phoebe.default_binary()
    b.flip_constraint("mass@primary", solve_for="q@binary")
    b.flip_constraint("mass@secondary", solve_for="sma@binary")
    b.add_solver("differential_corrections", solver="dc")
    b.set_value(twig="period@binary", value=0.56)
    b.add_dataset(kind="lc", compute_times=TIMES, overwrite=True)
    b.run_compute()
    return np.asarray(b.get_value("fluxes", dataset="lc01", context="model"))


async def test_constraint_expressions_cannot_run_code(make_hub, tmp_path):
    _, client = await make_hub(phoebe=True)
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"{{sma@binary}} + __import__('os').system('touch {marker}')",
        f"[c for c in ().__class__.__base__.__subclasses__()] and open('{marker}', 'w')",
        f"(lambda: open('{marker}', 'w'))()",
        f"exec(\"open('{marker}','w')\")",
    ]
    for expr in payloads:
        resp = await client.send(sid, "set_value", twig="sma@binary@constraint", value=expr)
        assert resp.status == 200 and resp.json()["success"] is False, expr
        # refused by the expression checks (not, say, for a mistyped parameter name)
        assert resp.json()["error"].startswith("constraint expression may not "), resp.body
    resp = await client.send(sid, "run_compute", detach=True)
    assert resp.json() == {
        "success": False,
        "error": "run_compute: argument 'detach' is not allowed "
        "(detached jobs start processes and write scripts)",
    }
    assert not marker.exists()
    # the session is intact and its constraint still works
    assert (await client.send(sid, "get_value", twig="period@binary")).json()["success"] is True
    assert (await client.send(sid, "set_value", twig="mass@primary", value=1.2)).json()[
        "success"
    ] is True
    assert (await client.send(sid, "is_parameter_constrained", twig="sma@binary")).json()[
        "result"
    ] is True


async def test_timeout_interrupts_a_real_compute(make_hub):
    app, client = await make_hub(
        phoebe=True,
        SessionManager__command_timeouts={"run_compute": 1.5},
        SessionManager__interrupt_grace=4.0,
    )
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]
    many = [float(t) for t in np.linspace(0, 5, 3000)]
    assert (await client.send(sid, "add_dataset", kind="lc", compute_times=many)).json()["success"]
    resp = await client.send(sid, "run_compute")
    assert resp.status == 504
    # the worker stops within the interrupt grace (else the hub would declare it hung and
    # this would be a 503) and keeps its bundle, without a half-added model
    resp = await client.send(sid, "get_value", twig="period@binary")
    assert resp.json() == {"success": True, "result": 1.0}
    assert (await client.send(sid, "get_value", twig="fluxes@model")).json()["success"] is False
    assert app.manager.sessions[sid].status == "running"


async def test_passbands(make_hub):
    _, client = await make_hub(phoebe=True)
    resp = await client.get("/system/passbands")
    assert resp.status == 200
    result = resp.json()["result"]
    assert "Johnson:V" in result["passbands"] and "V" in result["grouped"]["Johnson"]
