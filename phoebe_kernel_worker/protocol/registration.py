"""The registration message of a batch worker: how a node agent tells the hub where its
worker listens.

A batch job (the Slurm backend) cannot report on a pipe the hub holds, so the agent that
started the worker on its node (:mod:`phoebe_kernel_worker.node_agent`) sends the
worker's readiness report to the hub's registration listener over TCP, as one JSON line
signed with the one-time token the hub put in the job's connection file. Both sides
use this module: the agent to sign (:func:`registration_message`), the hub's listener
(``phoebe_spawner.spawners.slurm.registration``) to verify
(:func:`verify_registration`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

REGISTRATION_VERSION = 1
REGISTRATION_FIELD = "slurm_registration"
MAX_REGISTRATION_BYTES = 64 * 1024
REGISTRATION_CONTEXT = b"phoebe-spawner slurm registration v1"


def sign_registration(token: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of a registration body with the one-time token."""
    mac = hmac.new(token.encode(), REGISTRATION_CONTEXT, hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def registration_message(token: str, fields: dict[str, Any]) -> bytes:
    """One signed registration line: ``{"body": <json string>, "mac": hex}``."""
    body = orjson.dumps({"version": REGISTRATION_VERSION, **fields})
    return orjson.dumps({"body": body.decode(), "mac": sign_registration(token, body)}) + b"\n"


def verify_registration(token: str, line: bytes) -> dict[str, Any]:
    """The fields of a registration line signed with ``token``; ``ValueError`` otherwise."""
    try:
        outer = orjson.loads(line)
        body = str(outer["body"]).encode()
        mac = str(outer["mac"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"malformed registration: {e}") from None
    if not hmac.compare_digest(mac.encode(), sign_registration(token, body).encode()):
        raise ValueError("registration signature does not match")
    fields = orjson.loads(body)
    if not isinstance(fields, dict) or fields.get("version") != REGISTRATION_VERSION:
        raise ValueError("unsupported registration version")
    return fields
