"""The hub secret: the 32 bytes that session keys and cookie signatures derive from.

Read once by :meth:`PhoebeSpawnerApp.setup` (``load_secret``): from the
``PHOEBE_SPAWNER_SECRET`` environment variable (hex) when it is set, else from the
0600 secret file in the data directory, which is created on first start. It never
reaches a worker (``Spawner.env_keep`` withholds ``PHOEBE_SPAWNER_*``), a log or a
client; each worker gets only its own session key, derived from it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def load_secret(secret_file: str) -> bytes:
    """The hub secret: from the environment, else ``secret_file`` (created if missing).

    Raises ``SystemExit`` with one line when the variable is not hex or the file is
    readable by others.
    """
    env = os.environ.get("PHOEBE_SPAWNER_SECRET")
    if env:
        try:
            return bytes.fromhex(env)
        except ValueError:
            raise SystemExit("PHOEBE_SPAWNER_SECRET must be hex") from None
    path = Path(secret_file)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SystemExit(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    return secret
