"""The ``phoebe-spawner`` subcommands: ``upgrade-db`` and ``create-user``.

Each is a small traitlets Application that shares the main app's configuration (its
config file, then the command line, both checked as strictly as the hub's own, and the
same environment variables), which ``PhoebeSpawnerApp.subcommands`` names: so they
write the database the hub reads, and say which one (its URL without the password).
Their failures are one line on stderr and exit status 1, like the hub's.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Coroutine
from typing import Any

from traitlets import Bool, Unicode
from traitlets.config import Application
from traitlets.config.loader import KVArgParseConfigLoader

from .app import PhoebeSpawnerApp
from .configcheck import CheckedArgLoader
from .preflight import open_store, shown_url
from .spawners.wall import sqlite_path
from .store import DatabaseSchemaError

SHARED_ALIASES = {
    "data-dir": "PhoebeSpawnerApp.data_dir",
    "db": "PhoebeSpawnerApp.db_url",
    "config": "PhoebeSpawnerApp.config_file",
}


class _SubApp(Application):
    """A subcommand sharing the main app's configuration (file, then command line)."""

    parent_app: PhoebeSpawnerApp
    aliases = SHARED_ALIASES
    classes = [PhoebeSpawnerApp]  # what the shared aliases name (their -h help)

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

    def database(self) -> str:
        """The hub's database as it may be printed (URL without password), and whether
        this command is about to create it (a SQLite file that does not exist yet)."""
        app = self.parent_app
        path = sqlite_path(app.db_url)
        new = " (a new database: is it the hub's? give the hub's --data-dir or --db)"
        return shown_url(app.db_url) + (new if path and not os.path.exists(path) else "")

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``; a start-up problem (the data directory, the database) is one
        line on stderr and exit status 1."""
        try:
            asyncio.run(work)
        except (ValueError, DatabaseSchemaError, OSError) as e:
            print(f"{self.name}: {' '.join(str(e).split())}", file=sys.stderr)
            self.exit(1)


class UpgradeDB(_SubApp):
    """``phoebe-spawner upgrade-db``: create or upgrade the schema (backs up SQLite first)."""

    name = "phoebe-spawner upgrade-db"
    description = "Create or upgrade the database schema to this version's."

    def start(self) -> None:
        database = self.database()

        async def upgrade() -> None:
            self.parent_app.make_data_dir()
            store = await open_store(self.parent_app.db_url, upgrade=True)
            await store.close()

        self.run(upgrade())
        print(f"database schema is up to date: {database}")


class CreateUser(_SubApp):
    """``phoebe-spawner create-user --email E [--admin]``: create a jwt-mode account.

    The password is read from $PHOEBE_SPAWNER_NEW_PASSWORD or prompted for (never argv).
    """

    name = "phoebe-spawner create-user"
    description = """Create a user account for jwt mode, in the hub's database: give the
    same --data-dir, --db or --config as the hub (or the same environment). The password
    comes from $PHOEBE_SPAWNER_NEW_PASSWORD or a prompt, never from the command line."""
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
        database = self.database()
        self.run(self._create(password, database))

    async def _create(self, password: str, database: str) -> None:
        from .auth.jwt import JWTAuthenticator
        from .auth.passwords import password_problem

        app = self.parent_app
        app.make_data_dir()
        store = await open_store(app.db_url, upgrade=app.upgrade_db)
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
        print(f"created user {row['name']} (id {row['id']}) in {database}")
