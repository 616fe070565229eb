"""Everything the hub and the worker share: the protocol between them.

The hub (``phoebe_spawner``) imports nothing else from :mod:`phoebe_kernel_worker`
(``tests/unit/test_boundary.py`` holds it to that), and the worker takes these names
from here too, so each fact lives in one place:

* :mod:`.messages`: message framing, HMAC signing and the message types;
* :mod:`.frames`: typed buffers beside a command's JSON (dtypes, shapes, references);
* :mod:`.connection`: connection files, readiness reports, the CurveZMQ key;
* :mod:`.commands`: the command names a client may send and the duplicate-name check;
* :mod:`.limits`: the schema of a worker's cost caps (``Spawner.worker_limits``);
* :mod:`.exits`: exit statuses and the wording of out-of-memory endings;
* :mod:`.landlock`: the kernel's Landlock ABI (the worker's wall, the hub's log line);
* :mod:`.registration`: the signed line a batch node's agent registers its worker with;
* :mod:`.sockets`: the lean ZMQ sends of the command path (imports ``zmq``; not
  re-exported here, so importing this package stays free of sockets).

The names of :mod:`.messages`, :mod:`.connection` and :mod:`.commands` are also
importable from this package (``from phoebe_kernel_worker.protocol import Signer``).
"""

from __future__ import annotations

from phoebe_kernel_worker.protocol.commands import (
    COMMANDS,
    DUPLICATE_COMMAND_ERROR,
    has_duplicate_command,
)
from phoebe_kernel_worker.protocol.connection import (
    ConnectionInfo,
    derive_curve_secret,
    endpoints_from_json,
    endpoints_to_json,
    read_connection_file,
    write_connection_file,
)
from phoebe_kernel_worker.protocol.messages import (
    BIND_REQUEST,
    CHANNELS,
    DELIM,
    EXECUTE_REQUEST,
    INTERRUPT_REQUEST,
    KEY_BYTES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    SHUTDOWN_REQUEST,
    SIGNATURE_SCHEME,
    STATUS_REQUEST,
    Message,
    ProtocolError,
    Signer,
    derive_session_key,
    new_key,
)

__all__ = [
    "BIND_REQUEST",
    "CHANNELS",
    "COMMANDS",
    "DELIM",
    "DUPLICATE_COMMAND_ERROR",
    "EXECUTE_REQUEST",
    "INTERRUPT_REQUEST",
    "KEY_BYTES",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "SHUTDOWN_REQUEST",
    "SIGNATURE_SCHEME",
    "STATUS_REQUEST",
    "ConnectionInfo",
    "Message",
    "ProtocolError",
    "Signer",
    "derive_curve_secret",
    "derive_session_key",
    "endpoints_from_json",
    "endpoints_to_json",
    "has_duplicate_command",
    "new_key",
    "read_connection_file",
    "write_connection_file",
]
