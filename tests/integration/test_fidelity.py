"""Results through the hub are bit for bit what in-process PHOEBE gives.

Some sites set ``OPENBLAS_CORETYPE`` (and friends) because an older OpenBLAS computes
wrong results, or crashes, on their processors without them; the values it selects
change the last bits of PHOEBE's fluxes. Workers must inherit such settings from the
hub, so a scientist gets through the hub exactly what their own Python gives them.

The baseline runs PHOEBE itself (not our worker code) in a fresh Python process with
the hub's environment, so OpenBLAS loads with the same settings as the workers'. Each
kind of worker (cold, forked from the template, handed out from the warm pool) then
runs the same model: a light curve, a radial-velocity curve, and a
differential-corrections fit.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any

import numpy as np
import orjson
import pytest

pytestmark = pytest.mark.phoebe

LC_TIMES = [round(0.02 * i, 4) for i in range(41)]
RV_TIMES = [round(0.05 * i, 4) for i in range(12)]
#: a made-up observed light curve for the fit (its exact shape does not matter)
OBSERVED = [1.0 + 0.05 * float(np.cos(2 * np.pi * t / 0.56)) for t in LC_TIMES]
SIGMAS = [0.01] * len(LC_TIMES)

BASELINE = f"""
import sys, orjson, numpy as np, phoebe
b = phoebe.default_binary()
b.flip_constraint("mass@primary", solve_for="q@binary")
b.flip_constraint("mass@secondary", solve_for="sma@binary")
b.add_solver("differential_corrections", solver="dc")
b.set_value(twig="period@binary", value=0.56)
b.set_value(twig="teff@primary", value=6100)
b.add_dataset(kind="lc", times={LC_TIMES!r}, fluxes={OBSERVED!r}, sigmas={SIGMAS!r},
              dataset="lc01")
b.add_dataset(kind="rv", compute_times={RV_TIMES!r}, dataset="rv01")
b.run_compute()
out = {{
    "fluxes": b.get_value("fluxes", dataset="lc01", context="model"),
    "rvs_primary": b.get_value("rvs", dataset="rv01", component="primary", context="model"),
    "rvs_secondary": b.get_value("rvs", dataset="rv01", component="secondary", context="model"),
}}
b.set_value(twig="fit_parameters@dc", value=["incl@binary"])
b.run_solver(solver="dc", solution="fit")
out["fitted_values"] = b.get_value("fitted_values", solution="fit")
out = {{k: np.asarray(v, dtype=float).tolist() for k, v in out.items()}}
sys.stdout.buffer.write(orjson.dumps(out))
"""


def openblas_coretype() -> str:
    """The machine's own setting where it has one (never changed); else one to set."""
    own = os.environ.get("OPENBLAS_CORETYPE")
    if own:
        return own
    return "ARMV8" if platform.machine() in ("aarch64", "arm64") else "Prescott"


@pytest.fixture(scope="module")
def hub_environment() -> Any:
    """The hub's environment for this module: OPENBLAS_CORETYPE set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENBLAS_CORETYPE", openblas_coretype())
        yield


@pytest.fixture(scope="module")
def in_process(hub_environment: Any) -> dict[str, np.ndarray]:
    """What PHOEBE computes in a fresh process with the hub's environment."""
    done = subprocess.run(
        [sys.executable, "-c", BASELINE],
        env=dict(os.environ),
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return {k: np.asarray(v, dtype=float) for k, v in orjson.loads(done.stdout).items()}


async def through_the_hub(client: Any) -> dict[str, np.ndarray]:
    """The same model through one session of a hub."""
    resp = await client.post("/dash/start-session", {})
    assert resp.status == 200, resp.body
    sid = resp.json()["session_id"]

    async def send(command: str, **kwargs: Any) -> Any:
        reply = await client.send(sid, command, **kwargs)
        assert reply.status == 200 and reply.json()["success"], (command, reply.body[:500])
        return reply.json()["result"]

    await send("set_value", twig="period@binary", value=0.56)
    await send("set_value", twig="teff@primary", value=6100)
    await send(
        "add_dataset", kind="lc", times=LC_TIMES, fluxes=OBSERVED, sigmas=SIGMAS, dataset="lc01"
    )
    await send("add_dataset", kind="rv", compute_times=RV_TIMES, dataset="rv01")
    model = (await send("run_compute"))["model"]
    await send("set_value", twig="fit_parameters@dc", value=["incl@binary"])
    solution = (await send("run_solver", solver="dc", solution="fit"))["solution"]
    await client.post(f"/dash/end-session/{sid}")
    return {
        "fluxes": np.asarray(model["lc01"]["fluxes"], dtype=float),
        "rvs_primary": np.asarray(model["rv01"]["rvs_primary"], dtype=float),
        "rvs_secondary": np.asarray(model["rv01"]["rvs_secondary"], dtype=float),
        "fitted_values": np.asarray(solution["fitted_values"], dtype=float),
    }


WORKER_KINDS = {
    "cold": {"PhoebeSpawnerApp__spawner_class": "local"},
    "forked": {"PhoebeSpawnerApp__spawner_class": "local-forkserver"},
    "warm-pool": {
        "PhoebeSpawnerApp__spawner_class": "local-forkserver",
        "SessionManager__warm_pool_size": 1,
    },
}


@pytest.mark.parametrize("kind", list(WORKER_KINDS))
async def test_bit_identical_to_in_process_phoebe(kind, in_process, make_hub):
    app, client = await make_hub(phoebe=True, **WORKER_KINDS[kind])
    if kind == "warm-pool":
        from ..waiting import async_wait_for

        pool = app.manager.pool
        await async_wait_for(
            lambda: len(pool.ready) == pool.size, "the warm pool to fill", timeout=120
        )
    hub = await through_the_hub(client)
    assert set(hub) == set(in_process)
    for name, expected in in_process.items():
        assert hub[name].shape == expected.shape, name
        assert np.array_equal(hub[name], expected), (
            f"{name} through a {kind} worker differs from in-process PHOEBE: "
            f"max relative difference {np.max(np.abs(hub[name] / expected - 1)):.3g}"
        )


def test_workers_inherit_the_numerical_environment(hub_environment):
    """What makes the results identical: the spawner's environment for workers."""
    from phoebe_spawner.spawners.base import Spawner

    os.environ["PHOEBE_SPAWNER_JWT_SECRET"] = "s" * 40
    try:
        env = Spawner().get_env()
    finally:
        del os.environ["PHOEBE_SPAWNER_JWT_SECRET"]
    assert env["OPENBLAS_CORETYPE"] == openblas_coretype()
    assert "PHOEBE_SPAWNER_JWT_SECRET" not in env
    assert all(not k.startswith(("PHOEBE_SPAWNER_", "JUPYTERHUB_")) for k in env)
