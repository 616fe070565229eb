"""The single place the version of this repository's three distributions is written.

Read by setup.cfg (phoebe-spawner) and by packaging/from_tree.py, as text, for
phoebe-spawner-client and phoebe-kernel-worker; keep the ``__version__ = "..."`` line.
"""

__version__ = "0.1.0.dev0"
