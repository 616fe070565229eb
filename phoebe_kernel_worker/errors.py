"""Exceptions the PHOEBE kernel worker raises for client mistakes.

:class:`CommandError` is what :meth:`phoebe_kernel_worker.commands.PhoebeSession.dispatch`
raises for an unknown command or a rejected argument; its ``str()`` is a message meant
for the client.  :class:`UnsafeInput` is the subclass raised by
:mod:`phoebe_kernel_worker.safety` when an argument could make PHOEBE run code, start
processes or touch files.  Worker-only: the hub never sees these classes, only the
messages in replies.  The worker's main loop turns both into
``{"success": false, "error": str(exc)}``.
"""

from __future__ import annotations


class CommandError(Exception):
    """A command was unknown or its arguments were rejected; ``str()`` is client-facing."""


class UnsafeInput(CommandError):
    """An argument was refused because PHOEBE could evaluate or execute it."""
