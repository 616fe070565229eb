"""A command's numpy arrays from the buffer frames of its ``execute_request``.

The worker's shell loop (:meth:`phoebe_kernel_worker.worker.KernelWorker._handle_shell`)
calls :func:`attach_buffers` on a request that came with buffers. The hub checked the
buffers already (``phoebe_spawner.handlers.frames``); they are checked again here
against :mod:`phoebe_kernel_worker.protocol.frames`, because a worker trusts no
one's checks but its own: each frame's length must match its dtype and shape, a bool
buffer may hold only 0 and 1, and every ``{"__buffer__": i}`` reference must name a
buffer, each used once. The arrays are built with :func:`numpy.frombuffer` on the
received bytes (no copy; read-only, so nothing can change them behind PHOEBE's back).
After this the command's arguments go through the same checks as JSON ones
(:mod:`phoebe_kernel_worker.safety`: element caps, plain values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .protocol.frames import (
    HEADER_FIELD,
    BufferSpec,
    FramesError,
    resolve_references,
    specs_from_json,
)

__all__ = ["FramesError", "array_from_buffer", "attach_buffers"]


def array_from_buffer(spec: BufferSpec, data: bytes, index: int) -> np.ndarray:
    """The array of one buffer frame (no copy), after checking its length and values."""
    if len(data) != spec.nbytes:
        raise FramesError(
            f"buffer {index}: {len(data)} bytes, but shape {list(spec.shape)} of "
            f"{spec.dtype} needs {spec.nbytes}"
        )
    if spec.dtype == "|b1" and data and np.frombuffer(data, dtype=np.uint8).max() > 1:
        raise FramesError(f"buffer {index}: a bool buffer may hold only the bytes 0 and 1")
    return np.frombuffer(data, dtype=np.dtype(spec.dtype)).reshape(spec.shape)


def attach_buffers(request: Any, header: dict[str, Any], buffers: list[bytes]) -> Any:
    """``request`` with its buffer references replaced by numpy arrays.

    ``header`` is the message header (its :data:`HEADER_FIELD` describes the buffers),
    ``buffers`` the frames after the content. Raises :class:`FramesError` when anything
    does not add up (the worker answers ``bad_request``, the hub a 400).
    """
    specs = specs_from_json(header.get(HEADER_FIELD, []))
    if len(specs) != len(buffers):
        raise FramesError(f"{len(specs)} buffers described, {len(buffers)} received")
    arrays = [
        array_from_buffer(s, b, i) for i, (s, b) in enumerate(zip(specs, buffers, strict=True))
    ]
    return resolve_references(request, len(arrays), arrays.__getitem__)
