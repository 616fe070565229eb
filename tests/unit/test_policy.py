"""The session policies, pure (no hub, no sleeps, the clock passed in): culling, the
per-user session limit, the capacity and the port-status shape."""

from __future__ import annotations

from dataclasses import dataclass

from phoebe_spawner.auth.base import User
from phoebe_spawner.sessions.policy import (
    HUB_FDS,
    SPARE_SOCKETS,
    CapacityPlan,
    CullPolicy,
    capacity_limit,
    port_status,
    session_limit,
)

ADA = User(user_id="u1", name="ada", email="ada@example.org", groups=("staff", "lab"))
BOB = User(user_id="u2", name="bob", email="bob@example.org", groups=("lab",))


def test_default_applies_without_an_entry():
    assert session_limit(BOB, 4, {}) == 4
    assert session_limit(BOB, 4, {"group:staff": 8, "ada": 16}) == 4


def test_own_entry_wins_over_groups_by_name_id_or_email():
    for key in ("ada", "u1", "ada@example.org"):
        assert session_limit(ADA, 4, {key: 2, "group:staff": 8}) == 2


def test_most_generous_group_and_zero_is_unlimited():
    assert session_limit(ADA, 4, {"group:staff": 8, "group:lab": 6}) == 8
    assert session_limit(ADA, 4, {"group:staff": 8, "group:lab": 0}) == 0
    assert session_limit(BOB, 4, {"group:lab": 1}) == 1  # a group may also lower it


@dataclass
class Held:
    """An active session as the capacity report reads it."""

    user: User
    port: int | None


def _session(user: User, port: int) -> Held:
    return Held(user, port)


def test_port_status_for_a_user_is_cut_to_what_the_hub_has_left():
    active = [_session(ADA, 100), _session(BOB, 103), _session(BOB, 106)]
    assert port_status(active, 4, [100, 112], "u1", 4) == {
        "total_ports": 4,
        "reserved_ports": 1,
        "available_ports": 1,  # the hub has one slot left, ada's limit three more
        "reserved_port_list": [100],
        "port_range": "100-111",
    }
    assert port_status(active, 4, [], None)["reserved_port_list"] == [100, 103, 106]
    assert port_status(active, 4, [], "u2", 0)["total_ports"] == 4  # no per-user limit


def test_capacity_is_max_sessions_and_at_most_a_third_of_the_port_range():
    assert capacity_limit(100, [], 3) == 100
    assert capacity_limit(100, [9000, 9030], 3) == 10
    assert capacity_limit(5, [9000, 9030], 3) == 5
    assert capacity_limit(100, [9000, 9002], 3) == 0


def test_capacity_is_also_what_the_os_limits_and_a_ceiling_met_allow():
    assert capacity_limit(100, [], 3, os_allows=40) == 40
    assert capacity_limit(100, [9000, 9030], 3, os_allows=40) == 10
    assert capacity_limit(100, [], 3, os_allows=400, ceiling=7) == 7
    assert capacity_limit(0, [], 3) == 0  # no limit at all
    assert capacity_limit(0, [], 3, os_allows=40) == 40  # unlimited max_sessions, but the OS


def plan(**kw) -> CapacityPlan:
    fields = dict(
        max_sessions=1100,
        pool=0,
        fds_per_session=8,
        sockets_per_session=3,
        connections=2000,
        hard_nofile=20000,
        socket_limit=65535,
    )
    return CapacityPlan(**{**fields, **kw})


def test_what_max_sessions_needs_from_the_os():
    p = plan(pool=4)
    assert p.nofile == HUB_FDS + 2000 + 8 * 1104
    assert p.max_sockets == SPARE_SOCKETS + 3 * 1104
    assert plan().max_sockets == 3332  # the old default of 1,023 held 341 sessions


def test_sessions_the_limits_hold_leave_room_for_the_pool_and_http():
    p = plan(pool=4)
    assert p.sessions_by_fds(HUB_FDS + 2000 + 8 * 100) == 96
    assert p.sessions_by_fds(HUB_FDS + 2000 + 8 * 100 + 7) == 96  # whole sessions only
    assert p.sessions_by_fds(1000) == 0  # HTTP alone takes more: none, not negative
    assert p.sessions_by_fds(None) is None  # unlimited
    assert p.sessions_by_sockets(SPARE_SOCKETS + 3 * 100) == 96
    assert plan().sessions_by_sockets(1023) == 330  # zmq's default, with the spare


def test_a_plan_fits_when_the_hard_limits_hold_max_sessions():
    assert plan().fits and plan().allowed == (20000 - HUB_FDS - 2000) // 8
    low = plan(hard_nofile=4096)
    assert not low.fits
    assert low.allowed == (4096 - HUB_FDS - 2000) // 8 == 254
    assert plan(hard_nofile=None).allowed == (65535 - SPARE_SOCKETS) // 3  # ZMQ's limit
    assert not plan(max_sessions=30000, hard_nofile=None).fits
    assert plan(max_sessions=254, hard_nofile=4096).fits
    assert not plan(max_sessions=254, hard_nofile=4096, pool=1).fits


def test_the_backends_workers_bound_the_sessions_with_the_pool():
    assert plan(hard_nofile=None, workers=1000).allowed == 1000
    assert not plan(hard_nofile=None, workers=1000).fits  # 1,100 asked
    assert plan(hard_nofile=None, workers=1000, pool=4).sessions_by_workers == 996
    assert plan(max_sessions=1000, hard_nofile=None, workers=1000).fits
    assert plan(workers=None).allowed == (20000 - HUB_FDS - 2000) // 8  # no limit of its own
    assert plan(workers=5000).allowed == (20000 - HUB_FDS - 2000) // 8  # files bind first


@dataclass
class Facts:
    """A session as the cull policy reads it."""

    user: User = ADA
    status: str = "running"
    created_at: float = 1000.0
    last_activity: float = 1000.0
    busy: bool = False


def test_an_idle_session_is_culled_once_idle_timeout_has_passed():
    policy = CullPolicy(idle_timeout=60)
    s = Facts(last_activity=1000.0)
    assert policy.reason(s, now=1059.9) is None
    assert policy.reason(s, now=1060.0) == "idle for 60 s"


def test_no_cull_while_busy_watched_not_running_or_without_a_timeout():
    policy = CullPolicy(idle_timeout=60)
    assert policy.reason(Facts(busy=True), now=5000) is None
    assert policy.reason(Facts(), now=5000, watched=True) is None
    for status in ("pending", "stopping", "failed"):
        assert policy.reason(Facts(status=status), now=5000) is None
    assert CullPolicy().reason(Facts(), now=5000) is None  # idle_timeout 0: never


def test_max_age_culls_a_watched_session_but_never_mid_command():
    policy = CullPolicy(idle_timeout=0, max_age=600)
    assert policy.reason(Facts(created_at=1000), now=1600) is None
    assert policy.reason(Facts(created_at=1000), now=1601, watched=True) == "older than 600 s"
    assert policy.reason(Facts(created_at=1000, busy=True), now=9999) is None


def test_exempt_users_by_name_or_id_and_exempt_groups_are_never_culled():
    old = {"created_at": 0.0, "last_activity": 0.0}
    for exempt in ({"ada"}, {"u1"}):
        policy = CullPolicy(idle_timeout=1, max_age=1, exempt_users=exempt)
        assert policy.reason(Facts(user=ADA, **old), now=100) is None
        assert policy.reason(Facts(user=BOB, **old), now=100) == "older than 1 s"
    policy = CullPolicy(idle_timeout=1, exempt_groups={"staff"})
    assert policy.reason(Facts(user=ADA, **old), now=100) is None
    assert policy.reason(Facts(user=BOB, **old), now=100) == "idle for 100 s"
