"""Two small ZMQ helpers for the command path, shared by the worker and the hub.

Used by the worker's loop (``phoebe_kernel_worker.worker``) and the hub's channels
(``phoebe_spawner.channels``). The only protocol module that imports ``zmq``, so
:mod:`phoebe_kernel_worker.protocol` itself does not re-export it.

Every command crosses a socket four times (hub and worker, each way); pyzmq's
``send_multipart`` re-checks every frame's type and combines its flags as Python enums
for each frame, which costs more than the sends themselves for small messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq

from .messages import Buffer

__all__ = ["readable", "send_frames"]

_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def send_frames(
    sock: zmq.Socket[bytes], frames: Sequence[Buffer], *, flags: int = 0, copy: bool = True
) -> None:
    """Send ``frames`` as one multipart message (``flags`` apply to every frame)."""
    send = sock.send
    more = _SNDMORE | flags
    for frame in frames[:-1]:
        send(frame, more, copy=copy)
    send(frames[-1], flags, copy=copy)


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message waits on ``sock`` (its EVENTS option: no poll)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)
