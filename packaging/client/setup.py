"""Builds phoebe-spawner-client (``phoebe_spawner.client``) from this repository's tree.

Metadata and dependencies are in pyproject.toml beside this file; packaging/from_tree.py
finds the package, the version and makes the sdist carry them.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# beside this file in an unpacked sdist, one folder up in the repository
sys.path.insert(0, str(HERE if (HERE / "from_tree.py").is_file() else HERE.parent))

from from_tree import tree_setup  # noqa: E402

tree_setup(__file__, "phoebe_spawner.client")
