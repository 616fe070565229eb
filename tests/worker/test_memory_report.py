"""The worker's memory report reads its own process tree (``phoebe_kernel_worker.memory``)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psutil

from phoebe_kernel_worker.memory import MIB, descendants, process_tree_memory_mib

from ..waiting import wait_for

WAIT = "import sys; sys.stdin.read()"
# a child that starts a grandchild, prints its pid, then both wait for stdin to close
TREE = (
    "import subprocess, sys; "
    f"g = subprocess.Popen([sys.executable, '-c', {WAIT!r}], stdin=subprocess.PIPE); "
    "print(g.pid, flush=True); sys.stdin.read(); g.stdin.close(); g.wait()"
)


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, **kwargs)


def test_descendants_are_the_tree_psutil_finds_by_scanning_every_process():
    me = psutil.Process()
    with _python(TREE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        grandchild = int(child.stdout.readline())
        try:
            wait_for(lambda: grandchild in descendants(me.pid), "the grandchild to be listed")
            assert set(descendants(me.pid)) == {p.pid for p in me.children(recursive=True)}
            assert descendants(child.pid) == [grandchild]
            assert descendants(grandchild) == []
        finally:
            child.stdin.close()  # both exit
    wait_for(lambda: not psutil.pid_exists(grandchild), "the grandchild to exit")
    with contextlib.suppress(psutil.NoSuchProcess):
        assert grandchild not in descendants(me.pid)


def test_the_tree_memory_counts_the_children():
    assert 0 < process_tree_memory_mib()["uss"] <= process_tree_memory_mib()["rss"]
    ready = "import sys; print('ready', flush=True); sys.stdin.read()"
    with _python(ready, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline() == "ready\n"
            own = process_tree_memory_mib(child.pid)
            assert 0 < own["uss"] <= own["pss"] <= own["rss"]
            tree = process_tree_memory_mib()
            mine = psutil.Process().memory_full_info()
            assert tree["rss"] > own["rss"] and tree["rss"] * MIB > mine.rss
            assert tree["uss"] > own["uss"] and tree["uss"] * MIB > mine.uss
        finally:
            child.stdin.close()
