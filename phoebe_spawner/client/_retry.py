"""Waiting out the hub's ``Retry-After`` before asking again.

:meth:`~phoebe_spawner.client.PhoebeClient.start_session` sends its request through
:func:`with_retry_after`: a start the hub refused with 429 or 503 *and* a ``Retry-After``
(the per-user start rate, a busy database, too many connections) is sent again after
that many seconds, at most ``retries`` times. A wait longer than ``cap`` is never made:
such an answer is raised at once, as is every refusal without ``Retry-After`` (a
session limit, the hub's capacity, a worker that failed to start), which waiting would
not change. Such refusals create no session, so asking again starts at most one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ._errors import RateLimited, WorkerUnavailable

__all__ = ["with_retry_after"]

log = logging.getLogger("phoebe_spawner.client")

T = TypeVar("T")


def with_retry_after(
    send: Callable[[], T],
    *,
    retries: int,
    cap: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``send()``, again after each refusal that carries a ``Retry-After`` of at most
    ``cap`` seconds, ``retries`` times at most; the last refusal is raised."""
    attempt = 0
    while True:
        try:
            return send()
        except (RateLimited, WorkerUnavailable) as e:
            wait = e.retry_after
            if wait is None or attempt >= retries or wait > cap:
                raise
            attempt += 1
            log.info(
                "%s refused (%s); trying again in %g s (%d of %d)",
                what,
                e.detail,
                wait,
                attempt,
                retries,
            )
            sleep(wait)
