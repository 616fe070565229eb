"""Where ``share/phoebe_spawner`` (templates, static files, example configs) lives.

A source checkout has it beside the package; a wheel installs it under
``<prefix>/share/phoebe_spawner`` (``data_files`` in setup.cfg). Called by the app at
start-up to locate templates and examples, never per request.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

SUBDIR = Path("share") / "phoebe_spawner"


def candidates() -> list[Path]:
    """Places to look, most specific first."""
    here = Path(__file__).resolve().parent
    places = [here.parent / SUBDIR]  # source checkout or editable install
    prefixes = [sys.prefix, sys.exec_prefix, getattr(site, "USER_BASE", None) or ""]
    places += [Path(p) / SUBDIR for p in prefixes if p]
    return places


def share_dir() -> Path:
    """The first existing share directory; raises ``FileNotFoundError`` if none exists."""
    for place in candidates():
        if (place / "examples").is_dir():
            return place
    raise FileNotFoundError(
        "phoebe-spawner's share/phoebe_spawner directory was not found in "
        + ", ".join(str(p) for p in candidates())
    )
