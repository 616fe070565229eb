"""PHOEBE Lab's calls, shared by the worker and hub compatibility tests.

Taken from the Lab's public source (aprsa/phoebe-lab 0.1.0, ``lab/phoebe_ui.py`` at
0be53a6b, ``attach_ui_parameters`` with its defaults filled in), as sent on the wire.
"""

from __future__ import annotations

from typing import Any

LAB_UI_PARAMETERS: list[dict[str, Any]] = [
    {
        "ptype": "string",
        "qualifier": "project_name",
        "value": "Unnamed Project",
        "description": "Name of the binary system / project",
        "context": "ui",
    },
    {
        "ptype": "choice",
        "qualifier": "backend",
        "value": "PHOEBE",
        "choices": ["PHOEBE", "PHOEBAI"],
        "description": "Computation backend",
        "context": "ui",
    },
    {
        "ptype": "choice",
        "qualifier": "morphology",
        "value": "Detached",
        "choices": ["Detached", "Semi-detached", "Contact"],
        "description": "Morphology of the binary system",
        "context": "ui",
        "component": "binary",
    },
    {
        "ptype": "float",
        "qualifier": "phase_min",
        "value": -0.5,
        "description": "Starting phase for light curve plots",
        "context": "ui",
        "copy_for": {"kind": ["lc", "rv"], "dataset": "*"},
        "dataset": "_default",
    },
    {
        "ptype": "float",
        "qualifier": "phase_max",
        "value": 0.5,
        "description": "Ending phase for light curve plots",
        "context": "ui",
        "copy_for": {"kind": ["lc", "rv"], "dataset": "*"},
        "dataset": "_default",
    },
    {
        "ptype": "int",
        "qualifier": "phase_length",
        "value": 201,
        "description": "Number of phase points for light curve plots",
        "context": "ui",
        "copy_for": {"kind": ["lc", "rv"], "dataset": "*"},
        "dataset": "_default",
    },
]
