"""The Slurm backend: each session's worker is one batch job (``spawner_class = "slurm"``).

``spawner.py`` holds :class:`SlurmSpawner`; ``commands.py`` runs Slurm's client commands
and parses what they print, ``script.py`` renders the batch script, and
``registration.py`` is the hub's one-shot listener for a job's endpoints. What runs on
the compute node, the agent that starts the worker and registers it
(``python -m phoebe_kernel_worker.node_agent``), belongs to the worker distribution: a
node needs nothing of the hub's.
"""

from .spawner import SlurmSpawner

__all__ = ["SlurmSpawner"]
