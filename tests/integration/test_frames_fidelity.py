"""Arrays sent as typed buffers reach PHOEBE bit for bit, and give the model PHOEBE gives
in process.

The same ``add_dataset`` calls, with float64 arrays holding NaN, ``-0.0`` and subnormal
numbers, run once in a fresh Python process with PHOEBE itself (the hub's numerical
environment, as in ``test_fidelity.py``) and once through a hub whose worker receives
them as buffer frames. What PHOEBE stored (the dataset's times, fluxes, sigmas and an
rv dataset's compute times) and the model it computes from them must be identical to
the last bit. Values come back as JSON, which is exact for every finite float and
gives NaN back as NaN (the arrays use numpy's one NaN).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import orjson
import pytest

from phoebe_kernel_worker.protocol.frames import MEDIA_TYPE
from phoebe_spawner.client._frames import encode

from .test_fidelity import hub_environment  # noqa: F401 - fixture: OPENBLAS_CORETYPE set

pytestmark = pytest.mark.phoebe

#: times starting with -0.0 and two subnormal numbers; fluxes and sigmas with NaN, -0.0
#: and a subnormal (PHOEBE stores observations as given: only the times are computed at)
TIMES = np.array([-0.0, 5e-324, 2.2250738585072014e-308 / 3] + [0.02 * i for i in range(1, 38)])
FLUXES = 1.0 + 0.05 * np.cos(2 * np.pi * TIMES / 0.56)
FLUXES[[3, 4, 5]] = [np.nan, -0.0, 5e-324]
SIGMAS = np.full(TIMES.size, 0.01)
SIGMAS[[6, 7]] = [np.nan, -0.0]
RV_TIMES = np.linspace(-0.0, 0.55, 12)
RV_TIMES[1] = 5e-324

BASELINE = """
import sys, orjson, numpy as np, phoebe
arrays = {k: np.frombuffer(bytes.fromhex(v)) for k, v in orjson.loads(sys.stdin.read()).items()}
b = phoebe.default_binary()
b.flip_constraint("mass@primary", solve_for="q@binary")
b.flip_constraint("mass@secondary", solve_for="sma@binary")
b.add_solver("differential_corrections", solver="dc")
b.set_value(twig="period@binary", value=0.56)
b.add_dataset(kind="lc", times=arrays["times"], fluxes=arrays["fluxes"],
              sigmas=arrays["sigmas"], dataset="lc01")
b.add_dataset(kind="rv", compute_times=arrays["rv_times"], dataset="rv01")
b.run_compute()
out = {
    "times": b.get_value("times", dataset="lc01", context="dataset"),
    "fluxes": b.get_value("fluxes", dataset="lc01", context="dataset"),
    "sigmas": b.get_value("sigmas", dataset="lc01", context="dataset"),
    "rv_times": b.get_value("compute_times", dataset="rv01", context="dataset"),
    "model_fluxes": b.get_value("fluxes", dataset="lc01", context="model"),
    "model_rvs": b.get_value("rvs", dataset="rv01", component="primary", context="model"),
}
out = {k: np.asarray(v, float).tobytes().hex() for k, v in out.items()}
sys.stdout.buffer.write(orjson.dumps(out))
"""


@pytest.fixture(scope="module")
def in_process(hub_environment: Any) -> dict[str, np.ndarray]:  # noqa: F811
    arrays = {"times": TIMES, "fluxes": FLUXES, "sigmas": SIGMAS, "rv_times": RV_TIMES}
    done = subprocess.run(
        [sys.executable, "-c", BASELINE],
        input=orjson.dumps({k: v.tobytes().hex() for k, v in arrays.items()}),
        env=dict(os.environ),
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return {k: np.frombuffer(bytes.fromhex(v)) for k, v in orjson.loads(done.stdout).items()}


async def test_buffers_reach_phoebe_bit_for_bit(in_process, make_hub):
    _, client = await make_hub(phoebe=True, PhoebeSpawnerApp__spawner_class="local-forkserver")
    sid = (await client.post("/dash/start-session", {})).json()["session_id"]

    async def send(command: str, *, frames: bool = False, **kwargs: Any) -> Any:
        request = {"command": command, **kwargs}
        if frames:
            body = encode(request, min_elements=1)
            assert body is not None
            resp = await client.post(
                f"/send/{sid}", body=body, headers={"Content-Type": MEDIA_TYPE}
            )
        else:
            resp = await client.post(f"/send/{sid}", request)
        assert resp.status == 200 and resp.json()["success"], (command, resp.body[:500])
        return resp.json()["result"]

    def array(value: Any) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in value], dtype=float)

    await send("set_value", twig="period@binary", value=0.56)
    lc = {"kind": "lc", "times": TIMES, "fluxes": FLUXES, "sigmas": SIGMAS, "dataset": "lc01"}
    await send("add_dataset", frames=True, **lc)
    await send("add_dataset", frames=True, kind="rv", compute_times=RV_TIMES, dataset="rv01")
    model = (await send("run_compute"))["model"]
    got = {
        name: array(await send("get_value", twig=twig))
        for name, twig in (
            ("times", "times@lc01@dataset"),
            ("fluxes", "fluxes@lc01@dataset"),
            ("sigmas", "sigmas@lc01@dataset"),
            ("rv_times", "compute_times@rv01@dataset"),
        )
    }
    got["model_fluxes"] = array(model["lc01"]["fluxes"])
    got["model_rvs"] = array(model["rv01"]["rvs_primary"])
    await client.post(f"/dash/end-session/{sid}")
    assert set(got) == set(in_process)
    # what was sent is what PHOEBE holds, in process and through the hub
    sent = {"times": TIMES, "fluxes": FLUXES, "sigmas": SIGMAS, "rv_times": RV_TIMES}
    for name, array_sent in sent.items():
        assert in_process[name].tobytes() == array_sent.tobytes(), name
    for name, expected in in_process.items():
        assert got[name].tobytes() == expected.tobytes(), (
            f"{name} through buffers differs from in-process PHOEBE: "
            f"{np.flatnonzero(got[name].view(np.int64) != expected.view(np.int64))[:10]}"
        )
