"""A tour of phoebe_spawner.client: one PHOEBE session, a model, a fit, a checkpoint.

Run it against a hub (``bash .ci/serve`` starts one on http://127.0.0.1:8001):

    python client_example.py http://127.0.0.1:8001

Inside a JupyterHub notebook the URL and token come from the environment, so
``PhoebeClient()`` needs no arguments; the same cells work there.
"""

from __future__ import annotations

import sys

import numpy as np

from phoebe_spawner.client import PhoebeClient, PhoebeError


def main(url: str | None) -> None:
    with PhoebeClient(url) as client:
        session = client.start_session(project_name="Algol-like")
        print("session", session["session_id"][:8], session["status"])

        client.set_value("period@binary", 2.87)
        client.set_value("teff@secondary", 4800)
        print("period:", client.get_value("period@binary"))
        print("q constrained:", client.is_parameter_constrained("q@binary"))
        print("period parameter:", client.get_parameter("period@binary")["quantity"])

        times = np.linspace(0, 2.87, 201)
        client.add_dataset("lc", compute_times=times, dataset="lc01")
        model = client.run_compute()["model"]["lc01"]
        fluxes = model["fluxes"]
        print("fluxes:", type(fluxes).__name__, fluxes.shape, f"min {fluxes.min():.3f}")

        # 'observe' the model, then fit the secondary's temperature with the dc solver
        client.set_value("times@lc01@dataset", times)
        client.set_value("fluxes@lc01@dataset", fluxes * 1.01)
        client.set_value("sigmas@lc01@dataset", np.full_like(times, 0.01))
        client.set_value("fit_parameters@dc", ["teff@secondary"])
        solution = client.run_solver()["solution"]
        print("fitted:", solution["fit_parameters"], solution["fitted_values"].round(1))

        try:
            client.set_value("period@binary", -1)
        except PhoebeError as exc:
            print("PHOEBE said:", exc.error[:60])

        checkpoint = client.checkpoint("after the fit")
        print("checkpoint", checkpoint["checkpoint_id"][:8], checkpoint["size"], "bytes")
    with PhoebeClient(url) as client:
        print("sessions left running:", len(client.get_sessions()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
