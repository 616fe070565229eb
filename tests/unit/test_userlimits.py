"""The per-user session limit policy and the port-status shape (pure, no hub)."""

from __future__ import annotations

from phoebe_spawner.auth.base import User
from phoebe_spawner.sessions.session import LiveSession
from phoebe_spawner.sessions.userlimits import port_status, session_limit

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


def _session(user: User, port: int) -> LiveSession:
    s = LiveSession(id=f"s{port}", user=user, meta={}, spawner=None)
    s.port = port
    return s


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
