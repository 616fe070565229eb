"""Cost of reporting PHOEBE's progress from a worker, measured side by side.

Runs the same ``run_compute`` in this process with PHOEBE's progress bars off (the
floor) and with the worker's progress path on: ``ProgressBar`` in place of tqdm, each
report signed and published on a real ZMQ PUB socket, exactly as the worker does.
Alternates the two, prints one JSON line per run and a summary with the ratio.

    python benchmarks/progress_overhead.py [--points 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import orjson
import zmq

os.environ.setdefault("PHOEBE_ENABLE_ONLINE_PASSBANDS", "FALSE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import phoebe

    from phoebe_kernel_worker import progress, protocol

    phoebe.multiprocessing_off()
    b = phoebe.default_binary()
    b.add_dataset("lc", compute_times=np.linspace(0, 1, args.points))

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{tempfile.mkdtemp()}/iopub")
    signer = protocol.Signer(protocol.new_key(), "bench")
    reports = 0

    def sink(fraction: float, message: str) -> None:
        nonlocal reports
        reports += 1
        content = orjson.dumps({"fraction": fraction, "message": message})
        _, frames = signer.serialize("progress", content, parent_id="job")
        pub.send_multipart(frames, flags=zmq.NOBLOCK)

    def run(with_progress: bool) -> float:
        if with_progress:
            progress.install_phoebe_progress()
            progress.set_sink(sink)
        else:
            phoebe.progressbars_off()
            progress.set_sink(None)
        t0 = time.perf_counter()
        b.run_compute(overwrite=True)
        return time.perf_counter() - t0

    run(False)  # warm up meshes and caches
    times: dict[str, list[float]] = {"floor": [], "progress": []}
    for i in range(args.repeats):
        for mode in ("floor", "progress") if i % 2 == 0 else ("progress", "floor"):
            seconds = run(mode == "progress")
            times[mode].append(seconds)
            print(orjson.dumps({"mode": mode, "points": args.points, "seconds": seconds}).decode())
    floor = statistics.median(times["floor"])
    with_progress = statistics.median(times["progress"])
    summary = {
        "benchmark": "progress_overhead",
        "points": args.points,
        "floor_median_s": round(floor, 4),
        "progress_median_s": round(with_progress, 4),
        "ratio": round(with_progress / floor, 4),
        "reports_published": reports,
    }
    print(orjson.dumps(summary).decode())
    print(
        f"run_compute of {args.points} points: {floor:.3f} s without progress, "
        f"{with_progress:.3f} s with progress reporting (x{with_progress / floor:.3f})",
        file=sys.stderr,
    )
    pub.close()
    ctx.term()


if __name__ == "__main__":
    main()
