"""The client library with a real PHOEBE worker: one session, the PHOEBE commands,
a run_compute with its progress, and a run_compute stopped by a real SIGINT."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest

from phoebe_spawner.client import (
    ComputationCancelled,
    PhoebeClient,
    PhoebeError,
    SSEEvent,
)

from .hub_thread import ThreadedHub

pytestmark = pytest.mark.phoebe


@pytest.fixture
def client(tmp_path: Path) -> Any:
    with ThreadedHub(tmp_path / "hub", phoebe=True) as hub, PhoebeClient(hub.url) as c:
        c.start_session(project_name="client test")
        yield c


def test_phoebe_commands_and_a_computed_model(client: PhoebeClient, tmp_path: Path) -> None:
    client.set_value("period@binary", 0.75 * u.d)  # a Quantity is sent with its unit
    assert client.get_value("period@binary") == 0.75
    client.set_value(twig="period@binary", value=18, unit="h")
    assert client.get_value(twig="period@binary") == pytest.approx(0.75)

    param = client.get_parameter("period@binary")
    assert param["Class"] == "FloatParameter" and param["default_unit"] == "d"
    assert isinstance(param["quantity"], u.Quantity)
    assert param["quantity"].to(u.h).value == pytest.approx(18)
    assert client.is_parameter_constrained("q@binary") is True
    assert client.is_parameter_constrained("mass@primary") is False
    uid = client.get_uniqueid("teff@primary")
    assert uid and client.is_parameter_constrained(uniqueid=uid) is False
    assert "Johnson:V" in client.get_passbands()["passbands"]

    times = np.linspace(0, 0.75, 21)
    client.add_dataset("lc", compute_times=times, dataset="lc01", overwrite=True)
    assert client.get_datasets() == {"datasets": {"lc01": {"kind": "lc"}}}
    stored = client.get_value("compute_times@lc01@dataset")
    assert isinstance(stored, np.ndarray) and np.allclose(stored, times)

    events: list[SSEEvent] = []
    model = client.run_compute(callback=events.append, progress=False)["model"]["lc01"]
    assert isinstance(model["fluxes"], np.ndarray) and model["fluxes"].shape == (21,)
    assert np.all(model["fluxes"] > 0) and np.allclose(model["times"], times)
    assert [e.event for e in events][-1] == "succeeded"
    assert [e.data["fraction"] for e in events if e.event == "progress"][-1] == 1.0

    attached = client.attach_parameters(
        [
            {
                "ptype": "float",
                "qualifier": "weight",
                "value": 0.5,
                "description": "a client-side weight",
                "context": "ui",
            }
        ]
    )
    assert len(attached["unique_ids"]) == 1 and client.get_value("weight@ui") == 0.5
    assert client.update_uniqueid("weight@ui", "weight_ui") == "weight_ui"
    assert client.get_value(uniqueid="weight_ui") == 0.5

    saved = tmp_path / "model.phoebe"
    client.save_bundle(saved)
    client.remove_dataset("lc01")
    assert client.get_datasets() == {"datasets": {}}
    with pytest.raises(PhoebeError) as refused:
        client.set_morphology("spherical")
    assert refused.value.command == "set_morphology"
    client.load_bundle(saved)
    assert client.get_datasets() == {"datasets": {"lc01": {"kind": "lc"}}}
    assert client.get_value("period@binary") == pytest.approx(0.75)
    client.change_morphology("contact")
    assert client.get_datasets() == {"datasets": {}}
    client.new_bundle()
    assert client.get_value("period@binary") == 1.0


def test_sigint_during_run_compute_cancels_it_and_the_bundle_is_intact(
    client: PhoebeClient,
) -> None:
    client.set_value("period@binary", 1.25)
    client.add_dataset("lc", compute_times=np.linspace(0, 1, 3000), dataset="lc01")
    before = _parameters(client.get_bundle()["bundle"])
    seen: list[float] = []

    def interrupt_on_first_progress(event: SSEEvent) -> None:
        if event.event == "progress" and not seen:
            seen.append(event.data["fraction"])
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(ComputationCancelled) as cancelled:
        client.run_compute(callback=interrupt_on_first_progress, progress=False)
    assert seen and seen[0] < 1.0  # interrupted part way through
    assert cancelled.value.confirmed
    assert client.get_job(cancelled.value.job_id)["status"] == "cancelled"
    assert client.ping() == {"status": "ready"}
    assert client.get_value("period@binary") == 1.25
    with pytest.raises(PhoebeError):
        client.get_value("fluxes@lc01@model")  # no half-computed model was left behind
    # the same parameters as before (constraints may have been brought up to date)
    assert _parameters(client.get_bundle()["bundle"]) == before


def _parameters(bundle: str) -> set[tuple[str, str]]:
    return {(p["uniqueid"], p["context"]) for p in json.loads(bundle)}
