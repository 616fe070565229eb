"""What ``phoebe-spawner --generate-config`` writes; called by
:meth:`PhoebeSpawnerApp.write_default_config <phoebe_spawner.app.PhoebeSpawnerApp>`.

The curated essentials come first, active and commented: they are
``share/phoebe_spawner/examples/phoebe_spawner_config.py``, the one copy of them. Then
every option of every configurable class with its help and default, commented out.
"""

from __future__ import annotations

from ._data import share_dir


def config_file_text(reference: str) -> str:
    """The generated file: the essentials, then ``reference`` (traitlets'
    ``generate_config_file()`` of the app) without its own header."""
    essentials = (share_dir() / "examples" / "phoebe_spawner_config.py").read_text()
    # traitlets' reference opens with its own header and ``c = get_config()``: the
    # essentials already have both
    body = reference.partition("c = get_config()  #noqa\n")[2]
    rule = "# " + "=" * 90
    return (
        f"{essentials.rstrip()}\n\n\n{rule}\n"
        "# Reference: every option of every configurable class, with its help and its\n"
        "# default, commented out (`phoebe-spawner --help-all` prints the same).\n"
        f"{rule}\n{body}"
    )
