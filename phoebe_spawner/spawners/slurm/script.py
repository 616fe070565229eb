"""The batch script of a Slurm session job: a small template language and its default.

Used by :class:`~phoebe_spawner.spawners.slurm.SlurmSpawner`, which fills the template
(``SlurmSpawner.batch_template``) for each start and hands the result to ``sbatch`` on
stdin. Placeholders are ``{{name}}`` (bash never writes two braces), each replaced by a
value the spawner renders safely: ``#SBATCH`` lines from validated options, ``export``
lines quoted with :func:`shlex.quote`, and the agent command joined with
:func:`shlex.join`. An unknown placeholder is an error, so a typo in a site template
fails the first start loudly instead of submitting a broken job.

The script never holds a secret: the session key and the registration token travel in
the 0600 connection file (see ``docs/slurm.md``).
"""

from __future__ import annotations

import re
import shlex

#: The template used when ``SlurmSpawner.batch_template`` is not configured; the same
#: text, with comments, is in ``share/phoebe_spawner/slurm/batch_template.sh``.
DEFAULT_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={{job_name}}
#SBATCH --output={{output}}
#SBATCH --chdir={{chdir}}
#SBATCH --no-requeue
{{sbatch_options}}
{{prologue}}
{{environment}}
exec {{agent}}
"""

PLACEHOLDERS = frozenset(
    {"job_name", "output", "chdir", "sbatch_options", "prologue", "environment", "agent"}
)
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=\S.*)?$")


class TemplateError(ValueError):
    """The batch template or a value for it is unusable (one-line reason)."""


def check_template(template: str) -> None:
    """Raise :class:`TemplateError` if ``template`` has an unknown placeholder or no agent."""
    names = set(_PLACEHOLDER.findall(template))
    unknown = names - PLACEHOLDERS
    if unknown:
        raise TemplateError(f"unknown placeholder(s) in the batch template: {sorted(unknown)}")
    if "agent" not in names:
        raise TemplateError("the batch template must run {{agent}}")


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``template``'s placeholders from ``values`` (all of them must be given)."""
    check_template(template)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def sbatch_lines(options: list[str]) -> str:
    """``#SBATCH`` lines for options like ``--partition=debug`` (validated, one a line)."""
    lines = []
    for option in options:
        if "\n" in option or "\r" in option or not _OPTION.match(option):
            raise TemplateError(f"not a single sbatch option: {option!r}")
        lines.append(f"#SBATCH {option}")
    return "\n".join(lines)


def export_lines(env: dict[str, str]) -> str:
    """``export NAME=value`` lines, values quoted for bash."""
    lines = []
    for name, value in sorted(env.items()):
        if not _ENV_NAME.match(name):
            raise TemplateError(f"not an environment variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines)


def single_line(name: str, value: str) -> str:
    """``value`` if it is one line (paths and names that go into ``#SBATCH`` lines)."""
    if "\n" in value or "\r" in value:
        raise TemplateError(f"{name} must be a single line")
    return value


def mem_option(mem_bytes: int) -> str:
    """``--mem`` in whole MiB (rounded up; Slurm's default unit is MiB)."""
    mib = max(1, -(-mem_bytes // (1024 * 1024)))
    return f"--mem={mib}M"


def cpus_option(cpus: float) -> str:
    """``--cpus-per-task``: Slurm allocates whole CPUs, so fractions round up."""
    return f"--cpus-per-task={max(1, -int(-cpus // 1))}"


def agent_command(argv: list[str]) -> str:
    """The ``exec`` line's command, quoted for bash."""
    return shlex.join(argv)
