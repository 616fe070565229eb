"""Array upload: a 3 x 100k-point ``add_dataset`` in process, through the hub as JSON and
through the hub as typed buffers (issue 17's target: what the points add through the hub
at most 1.1x what they add in process).

PHOEBE's ``add_dataset`` costs a few hundred ms whatever the size (it rebuilds
constraints and twigs), so each way is also timed with 3 x 10 points and the
difference is "what the points add". Ways, interleaved round by round so drift in the
machine's load hits them alike:

* ``in_process_lists``: ``PhoebeSession.dispatch`` with the arguments as Python lists
  (what the worker gets from a JSON body; the in-process baseline of
  ``command_path.py``'s payload case and of the issue's numbers);
* ``in_process_arrays``: the same with numpy arrays (what a user's own Python passes);
* ``hub_json``: ``POST /send`` with the JSON body (encoded before the clock starts);
* ``hub_frames``: ``POST /send`` with the ``application/vnd.phoebe-spawner.frames``
  body the client library builds (encoded before the clock starts).

The client-side encoding of each body is timed apart (``encode_json``, ``encode_frames``).
Then the way back: ``get_value`` of the 100k fluxes as JSON and as buffers, each to a
numpy array as the client makes it (``download_100k_json``, ``download_100k_frames``).

    python benchmarks/array_upload.py [--url URL --token T] [--repeats 7]

Needs PHOEBE in this process for the in-process ways.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from common import Hub, emit, local_hub, machine, parser, summary

SCRATCH = tempfile.TemporaryDirectory(prefix="phoebe-bench-")
# the same BLAS/OpenMP pools as a forked worker (ForkServerSpawner.template_threads)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

FRAMES_TYPE = "application/vnd.phoebe-spawner.frames"
WAYS = ("in_process_lists", "in_process_arrays", "hub_json", "hub_frames")
TARGET = 1.1


def requests(points: int) -> dict[str, Any]:
    """The ``add_dataset`` request with ``points`` points, as numpy arrays."""
    import numpy as np

    rng = np.random.default_rng(1)
    t = np.linspace(0, 10, points)
    return {
        "command": "add_dataset",
        "kind": "lc",
        "dataset": "big",
        "times": t,
        "fluxes": 1 + 0.01 * rng.standard_normal(points),
        "sigmas": np.full(points, 0.01),
        "overwrite": True,
    }


def encode_all(request: dict[str, Any]) -> bytes:
    """The client's frames body with every array as a buffer (the 3 x 10 case too)."""
    from phoebe_spawner.client._frames import encode

    return encode(request, min_elements=1) or b""


def timed_encode(fn: Callable[[], bytes], n: int = 5) -> tuple[bytes, float]:
    times, body = [], b""
    for _ in range(n):
        t0 = time.perf_counter()
        body = fn()
        times.append(time.perf_counter() - t0)
    return body, statistics.median(times)


async def post(hub: Hub, sid: str, body: bytes, content_type: str) -> float:
    assert hub.http is not None
    t0 = time.perf_counter()
    async with hub.http.post(
        f"{hub.url}/send/{sid}", data=body, headers={"Content-Type": content_type}
    ) as resp:
        data = await resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status != 200 or not orjson.loads(data).get("success"):
        raise RuntimeError(f"{resp.status} {data[:300]!r}")
    return elapsed


async def run(hub: Hub, repeats: int) -> list[str]:
    from phoebe_kernel_worker.commands import PhoebeSession
    from phoebe_spawner.client._convert import dumps

    session = PhoebeSession(session_dir=Path(SCRATCH.name))
    sizes = {"3x10": 10, "3x100k": 100_000}
    bodies: dict[str, dict[str, bytes]] = {}
    for size, points in sizes.items():
        request = requests(points)
        json_body, json_s = timed_encode(functools.partial(dumps, request))
        frames_body, frames_s = timed_encode(functools.partial(encode_all, request))
        bodies[size] = {"json": json_body, "frames": frames_body}
        emit(
            "array_upload",
            f"encode_{size}",
            json_bytes=len(json_body),
            frames_bytes=len(frames_body),
            encode_json_ms=round(1000 * json_s, 2),
            encode_frames_ms=round(1000 * frames_s, 2),
        )

    def in_process(size: str, as_arrays: bool) -> float:
        request = requests(sizes[size])
        kwargs = {k: v for k, v in request.items() if k != "command"}
        if not as_arrays:
            kwargs = orjson.loads(bodies[size]["json"])  # what the JSON path's worker gets
            kwargs.pop("command")
        t0 = time.perf_counter()
        session.dispatch("add_dataset", kwargs)
        return time.perf_counter() - t0

    sid = await hub.start()
    times: dict[tuple[str, str], list[float]] = {(w, s): [] for w in WAYS for s in sizes}
    try:
        for _ in range(repeats + 1):  # the first round warms up and is dropped
            for size in sizes:
                one = {
                    "in_process_lists": in_process(size, False),
                    "in_process_arrays": in_process(size, True),
                    "hub_json": await post(hub, sid, bodies[size]["json"], "application/json"),
                    "hub_frames": await post(hub, sid, bodies[size]["frames"], FRAMES_TYPE),
                }
                for way, t in one.items():
                    times[(way, size)].append(t)
    finally:
        await hub.end(sid)
    # medians, and minima (the cost with the least interference from the machine's load)
    stats: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
    lines = []
    for stat, fn in stats.items():
        med = {key: fn(values[1:]) for key, values in times.items()}
        added = {w: med[(w, "3x100k")] - med[(w, "3x10")] for w in WAYS}
        for way in WAYS:
            emit(
                "array_upload",
                way,
                stat=stat,
                ms_3x10=round(1000 * med[(way, "3x10")], 1),
                ms_3x100k=round(1000 * med[(way, "3x100k")], 1),
                points_add_ms=round(1000 * added[way], 1),
                all_3x100k_ms=[round(1000 * t, 1) for t in times[(way, "3x100k")][1:]],
            )
            lines.append(
                f"{stat:6} {way}: 3x10 {1000 * med[(way, '3x10')]:.1f} ms, 3x100k "
                f"{1000 * med[(way, '3x100k')]:.1f} ms: the points add {1000 * added[way]:.1f} ms"
            )
        for hub_way in ("hub_json", "hub_frames"):
            ref = "in_process_lists"
            more = 1000 * (added[hub_way] - added["in_process_arrays"])
            if added[ref] <= 0 or added[hub_way] < 0:
                # one side within the noise of the 3 x 10 case: no ratio worth quoting
                emit("array_upload", f"ratio_{hub_way}_over_{ref}", stat=stat, ratio=None)
                lines.append(
                    f"{stat:6} {hub_way}: no ratio (a difference below the noise); "
                    f"{more:.1f} ms more than in_process_arrays adds"
                )
                continue
            ratio = added[hub_way] / added[ref]
            emit("array_upload", f"ratio_{hub_way}_over_{ref}", stat=stat, ratio=round(ratio, 2))
            lines.append(
                f"{stat:6} {hub_way} adds {ratio:.2f}x what {ref} adds (target <= {TARGET}: "
                f"{'met' if ratio <= TARGET else 'missed'}); {more:.1f} ms more than "
                "in_process_arrays adds"
            )
    lines += await download(hub, repeats)
    return lines


async def download(hub: Hub, repeats: int) -> list[str]:
    """``get_value`` of the 100k fluxes back to numpy: JSON (parsed and converted as the
    client does) against buffers (``Accept``, decoded as the client does)."""
    import numpy as np

    from phoebe_spawner.client._convert import numeric_array
    from phoebe_spawner.client._frames import decode

    assert hub.http is not None
    sid = await hub.start()
    body = orjson.dumps({"command": "get_value", "twig": "fluxes@big@dataset"})
    accepts = {"json": "application/json", "frames": f"{FRAMES_TYPE}, application/json"}
    times: dict[str, list[float]] = {name: [] for name in accepts}
    try:
        await post(hub, sid, encode_all(requests(100_000)), FRAMES_TYPE)
        for _ in range(repeats + 1):
            for name, accept in accepts.items():
                t0 = time.perf_counter()
                async with hub.http.post(
                    f"{hub.url}/send/{sid}", data=body, headers={"Accept": accept}
                ) as resp:
                    data = await resp.read()
                    framed = resp.headers["Content-Type"] == FRAMES_TYPE
                result = decode(data) if framed else orjson.loads(data)
                array = result["result"] if framed else numeric_array(result["result"])
                times[name].append(time.perf_counter() - t0)
                if not isinstance(array, np.ndarray) or array.size != 100_000:
                    raise RuntimeError(f"get_value gave {type(array).__name__}, not 100k fluxes")
                if framed != (name == "frames"):
                    raise RuntimeError(f"asked for {name}, got framed={framed}")
    finally:
        await hub.end(sid)
    lines = []
    for name, values in times.items():
        med, low = statistics.median(values[1:]), min(values[1:])
        emit(
            "array_upload",
            f"download_100k_{name}",
            median_ms=round(1000 * med, 1),
            min_ms=round(1000 * low, 1),
        )
        lines.append(
            f"get_value 100k fluxes as {name}, to a numpy array: median {1000 * med:.1f} ms,"
            f" min {1000 * low:.1f} ms"
        )
    return lines


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    emit("array_upload", "machine", **machine())
    if args.url:
        async with Hub(args.url, args.token) as hub:
            lines = await run(hub, args.repeats)
    else:
        with local_hub(spawner="local-forkserver") as (url, pid):
            async with Hub(url, None, pid) as hub:
                lines = await run(hub, args.repeats)
    summary("array upload (add_dataset, 3 x 100k points) and download", lines)


if __name__ == "__main__":
    asyncio.run(main())
