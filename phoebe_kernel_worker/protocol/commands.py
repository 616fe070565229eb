"""The commands a worker runs, by name, and how a request names its command.

:data:`COMMANDS` is every command name a client may send: the worker's command table
(``phoebe_kernel_worker.commands``) serves exactly these (a test holds the two
together), and the hub's metrics (``phoebe_spawner.metrics``) label its counters by
them. :func:`has_duplicate_command` is the check both the hub's handlers and the
worker make on a request body. Pure: no sockets, no PHOEBE.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["COMMANDS", "DUPLICATE_COMMAND_ERROR", "has_duplicate_command"]

#: Every command name a client may send (``change_morphology`` is an alias of
#: ``set_morphology``).
COMMANDS: frozenset[str] = frozenset(
    {
        "ping",
        "set_morphology",
        "change_morphology",
        "new_bundle",
        "get_parameter",
        "get_value",
        "set_value",
        "add_dataset",
        "remove_dataset",
        "run_compute",
        "run_solver",
        "get_bundle",
        "save_bundle",
        "load_bundle",
        "get_datasets",
        "get_uniqueid",
        "update_uniqueid",
        "is_parameter_constrained",
        "attach_parameters",
    }
)

#: What the hub and the worker answer for a body that names its command twice.
DUPLICATE_COMMAND_ERROR = "request names 'command' more than once"


def has_duplicate_command(body: bytes) -> bool:
    """Whether the top-level JSON object in ``body`` has more than one ``command`` key.

    JSON parsers disagree on duplicate keys (the hub's fast path reads the first, orjson
    keeps the last), so such a body could run one command while being logged, timed and
    rate-limited as another; the hub (:meth:`BaseHandler.command_request`) and the worker
    refuse it.  Cheap for ordinary bodies: only one naming ``"command"`` twice or using
    ``\\u`` escapes (which could spell it) is parsed again, with the top-level pairs kept.
    Returns False for a body that is not valid JSON (the callers' parser reports that).
    """
    if body.count(b'"command"') < 2 and b"\\u" not in body:
        return False
    last: list[list[tuple[str, Any]]] = [[]]

    def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        last[0] = pairs  # objects close inner-first: the top level is the last one
        return {}

    try:
        json.loads(body, object_pairs_hook=keep_pairs)
    except (ValueError, RecursionError):
        return False
    return sum(1 for key, _ in last[0] if key == "command") > 1
