"""Worker uids of root hubs: never handed out twice, by one hub or by two.

Each hub holds its workers' uids with locks the kernel keeps across processes, so a
second hub on the machine (or a second hub in one process) skips them, and a hub's
release never touches a uid it does not hold. No root needed: the pool is exercised
with a private lock directory and uids no process runs as.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phoebe_spawner.spawners import wall as wall_module
from phoebe_spawner.spawners.wall import UidPool

HOLDER = """
import sys
from phoebe_spawner.spawners.wall import UidPool
print(UidPool({low}, {high}, lock_dir={lock_dir!r}).allocate(), flush=True)
sys.stdin.read()  # hold the uid until told to exit
"""


def test_two_hubs_never_share_a_uid(tmp_path: Path) -> None:
    low, high = 70100, 70102
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(low=low, high=high, lock_dir=str(tmp_path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as other_hub:
        assert other_hub.stdout is not None
        assert int(other_hub.stdout.readline()) == low
        pool = UidPool(low, high, lock_dir=str(tmp_path))
        assert pool.allocate() == low + 1  # the other hub's uid is skipped
        with pytest.raises(LookupError, match="all 2 worker uids are in use"):
            pool.allocate()
        assert pool.claim(low) is False  # re-adoption cannot take it either
        pool.release(low)  # not ours: nothing happens
        assert other_hub.stdin is not None
        other_hub.stdin.close()
        other_hub.wait(timeout=30)
    # the other hub is gone, and the kernel dropped its lock with it
    assert pool.allocate() == low
    pool.release(low)
    pool.release(low + 1)
    assert pool.allocate() == low
    pool.release(low)


def test_two_hubs_in_one_process_share_the_registry(tmp_path: Path) -> None:
    first, second = (UidPool(70200, 70202, lock_dir=str(tmp_path)) for _ in range(2))
    uids = {first.allocate(), second.allocate()}
    assert uids == {70200, 70201}
    for uid in uids:
        first.release(uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another uid needs root")
def test_a_uid_some_process_runs_as_is_skipped(tmp_path: Path) -> None:
    """A uid nobody holds a lock on but a process runs as (something a worker left) is
    never handed out, once a scan has seen the process."""
    low, high = 70300, 70302
    with subprocess.Popen(["sleep", "60"], user=low) as squatter:
        try:
            wall_module.running_uids(max_age=0)  # a scan after the process started
            pool = UidPool(low, high, lock_dir=str(tmp_path))
            assert pool.allocate() == low + 1
            pool.release(low + 1)
        finally:
            squatter.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another uid needs root")
def test_one_scan_serves_the_allocations_of_its_ttl() -> None:
    """A burst of starts scans the process table once, not once a start; ``max_age=0``
    scans again and sees a process started after the last scan."""
    uid = 70310
    first = wall_module.running_uids(max_age=0)
    assert uid not in first
    with subprocess.Popen(["sleep", "60"], user=uid) as child:
        try:
            assert wall_module.running_uids(max_age=60) is first  # young enough: no new scan
            assert uid in wall_module.running_uids(max_age=0)
        finally:
            child.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another uid needs root")
def test_a_release_kills_what_runs_as_the_uid_and_one_scan_serves_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a worker left running as its uid (an escaped grandchild) is killed when the
    uid is given back; uids released while a scan waits share the next one, and stay
    held (never handed out) until it is done."""
    low, high = 70400, 70403
    pool = UidPool(low, high, lock_dir=str(tmp_path))
    left = [subprocess.Popen(["sleep", "60"], user=uid) for uid in (low, low + 1)]
    wall_module.running_uids(max_age=0)  # the allocation below uses this scan
    scans = []
    real_scan = wall_module.scan_processes
    monkeypatch.setattr(wall_module, "scan_processes", lambda: scans.append(1) or real_scan())
    try:
        assert pool.claim(low) and pool.claim(low + 1)  # as for re-adopted workers
        with UidPool._releasing:  # a scan is under way: what is queued now waits for it
            pool.release_later(low)
            pool.release_later(low + 1)
            assert pool.allocate() == low + 2  # the queued uids are still held
        wall_module.RELEASES.submit(lambda: None).result()  # the queue has run
        assert [p.wait(timeout=10) for p in left] == [-9, -9]
        assert scans == [1]  # one scan for both
        assert pool.allocate() == low  # given back
    finally:
        for p in left:
            p.kill()
            p.wait()
    for uid in (low, low + 2):
        pool.release(uid)


def test_with_no_uid_free_an_allocation_gives_back_the_queued_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At full capacity a start must not fail on a uid whose session has ended and
    which only waits for its release scan: the allocation runs the queue itself."""
    low, high = 70410, 70411
    pool = UidPool(low, high, lock_dir=str(tmp_path))
    assert pool.allocate() == low
    monkeypatch.setattr(wall_module.RELEASES, "submit", lambda fn: None)  # thread busy
    pool.release_later(low)
    assert pool.queued == {low}
    assert pool.allocate() == low
    assert pool.queued == set()
    pool.release(low)


def test_a_claim_takes_a_uid_off_the_release_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A uid queued for release and then claimed again (a worker re-adopted by a later
    hub of the same process) stays held: the release must not kill its worker."""
    low, high = 70420, 70421
    pool = UidPool(low, high, lock_dir=str(tmp_path))
    assert pool.allocate() == low
    monkeypatch.setattr(wall_module.RELEASES, "submit", lambda fn: None)  # thread busy
    pool.release_later(low)
    assert pool.claim(low)
    assert pool.queued == set()
    pool.release_queued()  # the release thread's turn comes: nothing to give back
    assert low in pool.held
    with pytest.raises(LookupError):
        pool.allocate()
    pool.release(low)
