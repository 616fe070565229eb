"""Mode ``none``: no credentials; every request is the single anonymous user.

Meant for one person on their own machine: the app binds to 127.0.0.1 in this mode
unless told otherwise, and warns loudly if it is exposed.
"""

from __future__ import annotations

from typing import ClassVar

from tornado.web import RequestHandler

from .base import Authenticator, User

ANONYMOUS = User(
    user_id="anonymous",
    name="anonymous",
    email="",
    full_name="Anonymous",
    role="admin",
    admin=True,
)


class NoAuthenticator(Authenticator):
    """Everyone is the anonymous user (who administers their own local hub)."""

    mode: ClassVar[str] = "none"
    has_identity: ClassVar[bool] = False

    async def authenticate(self, handler: RequestHandler) -> User:
        return ANONYMOUS
