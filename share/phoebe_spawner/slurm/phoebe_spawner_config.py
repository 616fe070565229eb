# The Slurm part of a phoebe_spawner_config.py (see docs/slurm.md).
# `c` is provided by traitlets when the hub loads this file.
c = get_config()  # type: ignore[name-defined]  # noqa: F821

c.PhoebeSpawnerApp.spawner_class = "slurm"
# database, hub secret and session storage; runtime/ must be on storage the nodes share
c.PhoebeSpawnerApp.data_dir = "/shared/phoebe-spawner"

c.SlurmSpawner.partition = "interactive"
c.SlurmSpawner.account = "phoebe"
c.SlurmSpawner.time_limit = "8:00:00"
c.SlurmSpawner.cpu_limit = 2  # --cpus-per-task=2
c.SlurmSpawner.mem_limit = "4G"  # --mem=4096M
c.SlurmSpawner.prologue = "source /shared/phoebe-venv/bin/activate"
c.SlurmSpawner.cmd = ["/shared/phoebe-venv/bin/python", "-m", "phoebe_kernel_worker"]
c.SlurmSpawner.agent_cmd = [
    "/shared/phoebe-venv/bin/python",
    "-m",
    "phoebe_kernel_worker.node_agent",
]
# the hub's address on the cluster network; jobs register their endpoints here
c.SlurmSpawner.registration_ip = "10.1.0.5"
c.SlurmSpawner.registration_port_range = [45000, 45100]  # open these from the nodes
# anything but a private, trusted cluster network: encrypt the channels
c.SlurmSpawner.encrypt = True
# a queue can hold a job for a while; users see "pending (Priority)" meanwhile
c.SlurmSpawner.start_timeout = 900
# the hub polls each job at most this often (scontrol show job)
c.SlurmSpawner.state_cache_seconds = 10
c.SessionManager.poll_interval = 5
