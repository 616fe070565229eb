#!/bin/bash
# A site batch template for SlurmSpawner (phoebe-spawner). Set it in
# phoebe_spawner_config.py:
#
#     from pathlib import Path
#     c.SlurmSpawner.batch_template = Path("/etc/phoebe-spawner/batch_template.sh").read_text()
#
# Placeholders are the names below written between two pairs of curly braces (bash's
# own ${VAR} is left alone), all filled by the hub. They are filled everywhere, comments
# included, and some values span several lines: never write one in a comment, or its
# lines land above the #SBATCH header, where sbatch stops reading its options.
#   job_name        phoebe-<session id>: the hub checks it when it re-adopts a job
#   output          the job's log, in the session's runtime directory (shared storage)
#   chdir           that runtime directory
#   sbatch_options  #SBATCH lines from partition, account, qos, time_limit,
#                   cpu_limit (--cpus-per-task), mem_limit (--mem), extra_sbatch_options
#   prologue        SlurmSpawner.prologue (module loads, venv activation)
#   environment     export lines: the worker's allow-listed environment
#   agent           the agent command; it starts the worker and registers it with the hub
#
# No secret ever appears in this script: the session key and the one-time registration
# token reach the node in a 0600 connection file that the agent deletes on start.
#SBATCH --job-name={{job_name}}
#SBATCH --output={{output}}
#SBATCH --chdir={{chdir}}
#SBATCH --no-requeue
{{sbatch_options}}

# site set-up: modules, a shared venv with phoebe-kernel-worker (the agent and the worker)
module purge 2>/dev/null || true
{{prologue}}

# PHOEBE threads: follow the CPUs Slurm gave us
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
{{environment}}

exec {{agent}}
