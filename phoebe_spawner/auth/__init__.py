"""Authenticators: one module per mode, behind the interface in :mod:`.base`."""

from .base import Authenticator, AuthError, User

__all__ = ["AuthError", "Authenticator", "User"]
