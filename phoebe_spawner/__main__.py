"""``python -m phoebe_spawner`` runs the hub, like the ``phoebe-spawner`` command."""

from .app import main

main()
