"""The configuration checks and the connection-limit address rules, without a hub."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders
from traitlets import Unicode
from traitlets.config import Config

from phoebe_spawner.app import AUTH_GROUP, SPAWNER_GROUP, PhoebeSpawnerApp
from phoebe_spawner.configcheck import (
    ConfigProblem,
    KnownClasses,
    check,
    known_classes,
    loopback_only,
    setting_lines,
)
from phoebe_spawner.httpserver import address_key, forwarded_ip
from phoebe_spawner.spawners.local import LocalProcessSpawner


class ColourSpawner(LocalProcessSpawner):
    """A backend chosen by dotted path, known to nobody else."""

    colour = Unicode("blue").tag(config=True)


def config(**sections: dict) -> Config:
    c = Config()
    for name, values in sections.items():
        for trait, value in values.items():
            setattr(getattr(c, name), trait, value)
    return c


def test_setting_lines_finds_attribute_and_item_forms():
    text = "x = 1\nc.SessionManager.idle_timeout = 5\nc['Spawner']['cmd'] = []\n"
    lines = setting_lines(text)
    assert lines[("SessionManager",)] == 2 and lines[("SessionManager", "idle_timeout")] == 2
    assert lines[("Spawner", "cmd")] == 3
    assert setting_lines("c.X = (") == {}  # a syntax error has no lines


def test_a_backend_chosen_by_dotted_path_is_known():
    path = f"{__name__}:ColourSpawner"
    known = known_classes([PhoebeSpawnerApp], [AUTH_GROUP, SPAWNER_GROUP], [(SPAWNER_GROUP, path)])
    check(config(ColourSpawner={"colour": "red"}, Spawner={"start_timeout": 5}), known, "f.py", {})
    with pytest.raises(ConfigProblem) as e:
        check(config(ColourSpawner={"color": "red"}), known, "f.py", {("ColourSpawner",): 7})
    assert str(e.value) == (
        "f.py, line 7: unknown setting c.ColourSpawner.color; did you mean c.ColourSpawner.colour?"
    )


def test_a_base_class_section_reaches_its_subclasses_traits():
    known = KnownClasses.of([ColourSpawner])
    check(config(Spawner={"colour": "red"}), known, "command line")  # traitlets applies it


def test_names_known_without_their_module_are_not_checked():
    known = KnownClasses.of([PhoebeSpawnerApp], unchecked=["HubAuthenticator"])
    check(config(HubAuthenticator={"anything": 1}), known, "f.py", {})


def test_problems_are_reported_in_file_order_with_a_count():
    known = KnownClasses.of([PhoebeSpawnerApp])
    lines = {("PhoebeSpawnerApp", "porrt"): 9, ("Nonesuch",): 3}
    c = config(PhoebeSpawnerApp={"porrt": 1}, Nonesuch={"x": 1})
    with pytest.raises(ConfigProblem) as e:
        check(c, known, "f.py", lines)
    assert str(e.value).startswith("f.py, line 3: unknown configurable class Nonesuch")
    assert str(e.value).endswith("(and 1 more)")


LOOPBACK = ["127.0.0.1", "localhost", "::1", "127.0.0.9"]
EXPOSED = ["0.0.0.0", "", "::", "no-such-host.invalid"]  # noqa: S104 - only looked up


@pytest.mark.parametrize(
    ("host", "loopback"), [(h, True) for h in LOOPBACK] + [(h, False) for h in EXPOSED]
)
def test_loopback_only(host, loopback):
    assert loopback_only(host) is loopback


def test_address_key_groups_an_ipv6_host_by_its_64():
    assert address_key("198.51.100.7") == "198.51.100.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert address_key("") == ""


def test_forwarded_ip_follows_tornados_xheaders_rule():
    peer = "127.0.0.1"
    two = HTTPHeaders({"X-Forwarded-For": "1.2.3.4, 5.6.7.8"})
    assert forwarded_ip(two, peer, []) == "5.6.7.8"
    assert forwarded_ip(two, peer, ["5.6.7.8"]) == "1.2.3.4"  # a trusted proxy is skipped
    headers = HTTPHeaders({"X-Forwarded-For": "1.2.3.4", "X-Real-Ip": "9.9.9.9"})
    assert forwarded_ip(headers, peer, []) == "9.9.9.9"
    assert forwarded_ip(HTTPHeaders({"X-Real-Ip": "not an address"}), peer, []) == peer
    assert forwarded_ip(HTTPHeaders(), peer, []) == peer
