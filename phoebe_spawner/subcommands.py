"""The ``phoebe-spawner`` subcommands: ``upgrade-db`` and ``create-user``.

Each is a small traitlets Application that shares the main app's configuration (its
config file, then the command line, both checked as strictly as the hub's own), which
``PhoebeSpawnerApp.subcommands`` names.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from typing import Any

from traitlets import Bool, Unicode
from traitlets.config import Application
from traitlets.config.loader import KVArgParseConfigLoader

from .app import PhoebeSpawnerApp
from .configcheck import CheckedArgLoader
from .store import Store

SHARED_ALIASES = {
    "data-dir": "PhoebeSpawnerApp.data_dir",
    "db": "PhoebeSpawnerApp.db_url",
    "config": "PhoebeSpawnerApp.config_file",
}


class _SubApp(Application):
    """A subcommand sharing the main app's configuration (file, then command line)."""

    parent_app: PhoebeSpawnerApp
    aliases = SHARED_ALIASES

    def _create_loader(self, *args: Any, **kwargs: Any) -> KVArgParseConfigLoader:
        parent = self.parent
        assert isinstance(parent, PhoebeSpawnerApp)
        return CheckedArgLoader(*args, **kwargs, log=self.log, check=parent.check_command_line)

    def initialize(self, argv: list[str] | None = None) -> None:
        """Parse and check the command line, then load the config file strictly (a
        :class:`ConfigProblem` stops the command; the main app prints it)."""
        super().initialize(argv)
        parent = self.parent
        assert isinstance(parent, PhoebeSpawnerApp)
        self.parent_app = parent
        parent.update_config(self.cli_config)  # --config may name the file
        parent.load_configuration(self.cli_config)


class UpgradeDB(_SubApp):
    """``phoebe-spawner upgrade-db``: create or upgrade the schema (backs up SQLite first)."""

    description = "Create or upgrade the database schema to this version's."

    def start(self) -> None:
        async def upgrade() -> None:
            store = Store(self.parent_app.db_url)
            await store.init(upgrade=True)
            await store.close()

        self.parent_app.make_data_dir()
        asyncio.run(upgrade())
        print("database schema is up to date")


class CreateUser(_SubApp):
    """``phoebe-spawner create-user --email E [--admin]``: create a jwt-mode account.

    The password is read from $PHOEBE_SPAWNER_NEW_PASSWORD or prompted for (never argv).
    """

    description = "Create a user account for jwt mode."
    email = Unicode("", help="The new user's email (their login name).").tag(config=True)
    first_name = Unicode("").tag(config=True)
    last_name = Unicode("").tag(config=True)
    admin = Bool(False, help="Make the user an admin.").tag(config=True)
    aliases = {
        **SHARED_ALIASES,
        "email": "CreateUser.email",
        "first-name": "CreateUser.first_name",
        "last-name": "CreateUser.last_name",
    }
    flags = {"admin": ({"CreateUser": {"admin": True}}, "Make the user an admin.")}

    def start(self) -> None:
        if not self.email:
            raise SystemExit("--email is required")
        password = os.environ.get("PHOEBE_SPAWNER_NEW_PASSWORD") or getpass.getpass("Password: ")
        asyncio.run(self._create(password))

    async def _create(self, password: str) -> None:
        from .auth.jwt import JWTAuthenticator
        from .auth.passwords import password_problem

        app = self.parent_app
        app.make_data_dir()
        store = Store(app.db_url)
        await store.init(upgrade=app.upgrade_db)
        try:
            auth = JWTAuthenticator(parent=app, store=store)
            problem = password_problem(
                password, auth.min_password_length, reject_common=auth.reject_common_passwords
            )
            if problem:
                raise SystemExit(problem)
            row = await auth.create_user(
                self.email.strip().lower(),
                password,
                first_name=self.first_name,
                last_name=self.last_name,
                role="admin" if self.admin else "user",
                admin=self.admin,
            )
        finally:
            await store.close()
        if row is None:
            raise SystemExit(f"a user {self.email} already exists")
        print(f"created user {row['name']} (id {row['id']})")
