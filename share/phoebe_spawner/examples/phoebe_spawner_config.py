# phoebe-spawner configuration for a standalone deployment (copy, then edit).
# `phoebe-spawner --generate-config` writes this file, followed by every option with its
# help, commented out.
# Secrets do not belong in this file: set PHOEBE_SPAWNER_JWT_SECRET (and
# PHOEBE_SPAWNER_DB_URL if the URL holds a password) in the service's environment.

c = get_config()  # noqa: F821 -- provided by traitlets when the file is loaded

# --- where and how to listen -------------------------------------------------------------
c.PhoebeSpawnerApp.ip = "0.0.0.0"
c.PhoebeSpawnerApp.port = 8001
c.PhoebeSpawnerApp.auth_mode = "jwt"  # accounts in the hub's database
c.PhoebeSpawnerApp.data_dir = "/var/lib/phoebe-spawner"
# c.PhoebeSpawnerApp.db_url = "postgresql+psycopg://phoebe@db/phoebe"
# c.PhoebeSpawnerApp.trust_proxy_headers = True  # behind nginx/traefik
c.PhoebeSpawnerApp.max_body_size = 64 * 1024 * 1024

# --- sessions ------------------------------------------------------------------------------
c.SessionManager.max_sessions = 120  # capacity of this machine
c.SessionManager.max_sessions_per_user = 3
c.SessionManager.idle_timeout = 2 * 3600  # cull after two idle hours
c.SessionManager.command_timeout = 6 * 3600  # a run_solver may take hours
c.SessionManager.command_timeouts = {"ping": 30, "get_value": 120}
c.SessionManager.stop_workers_on_shutdown = True

# --- workers ---------------------------------------------------------------------------------
# the default: workers forked from a template that loaded PHOEBE ("local": a cold start each)
c.PhoebeSpawnerApp.spawner_class = "local-forkserver"
c.LocalProcessSpawner.mem_limit = "4G"  # address-space limit of each worker
c.LocalProcessSpawner.cpu_limit = 1  # threads for BLAS/OpenMP
c.LocalProcessSpawner.start_timeout = 60
# c.LocalProcessSpawner.port_range = [20000, 21000]  # if a firewall needs a fixed range
# c.LocalProcessSpawner.environment = {"PHOEBE_MULTIPROC_NPROCS": "1"}
# Instant starts (docs/performance.md):
# c.SessionManager.warm_pool_size = 4  # ready workers for instant starts
# Heavy computes yield the CPU to interactive work (needs a writable cgroup cpu tree,
# e.g. systemd Delegate=yes and the service's cgroup as the parent):
# c.SessionManager.cpu_isolation = True
# c.SessionManager.cpu_cgroup_parent = "/sys/fs/cgroup/system.slice/phoebe-spawner.service"

# --- tokens ----------------------------------------------------------------------------------
c.JWTAuthenticator.expire_minutes = 12 * 60
