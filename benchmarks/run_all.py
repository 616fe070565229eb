"""Run every benchmark of this directory in turn and keep their JSON lines.

    python benchmarks/run_all.py [--url URL --token T --hub-pid PID] [--out results.jsonl]

Without ``--url`` each script starts the hubs it needs (see ``common.local_hub``).
Every script prints its own summary; the JSON lines of all of them are also written to
``--out`` (default ``benchmarks/results-<UTC time>.jsonl``) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = [
    "session_start.py",
    "session_end.py",
    "command_path.py",
    "array_upload.py",
    "memory.py",
    "interrupts.py",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("--hub-pid")
    p.add_argument(
        "--out",
        default=os.path.join(
            HERE, f"results-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
        ),
    )
    p.add_argument("--only", default=",".join(s.removesuffix(".py") for s in SCRIPTS))
    args = p.parse_args()
    common = []
    if args.url:
        common += ["--url", args.url]
    if args.token:
        common += ["--token", args.token]
    status = 0
    with open(args.out, "w") as out:
        for name in args.only.split(","):
            argv = [sys.executable, os.path.join(HERE, f"{name}.py"), *common]
            if name == "memory" and args.hub_pid:
                argv += ["--hub-pid", args.hub_pid]
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=HERE)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            out.writelines(line + "\n" for line in proc.stdout.splitlines() if line.startswith("{"))
            status = status or proc.returncode
    print(f"\nJSON lines written to {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
