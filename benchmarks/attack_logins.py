"""Attacks on logins: bursts of wrong passwords for the victim's account from one
address and from 20 at once, with the victim's own login from another address. Part of
benchmarks/attacks.py's ``Attacks``.
"""

from __future__ import annotations

import asyncio

import orjson
from attack_base import AttackBase, Outcome
from attack_harness import Answer, call, new_client


class LoginAttacks(AttackBase):
    """``login_burst`` and ``login_spray`` (each failure costs an Argon2 check in the
    hub)."""

    async def login_burst(self) -> Outcome:
        """Wrong passwords for the victim's account from 127.0.0.3 (30, six at a time),
        then the victim's own login from 127.0.0.2, which must succeed at once."""
        return await self._wrong_logins(["127.0.0.3"], attempts=30, parallel=6)

    async def login_spray(self) -> Outcome:
        """The same from 20 addresses at once (100 wrong logins, 20 at a time: each
        (account, address) pair gets its free failures, each costing an Argon2 check),
        with the owner's login from 127.0.0.2 half-way through."""
        sources = [f"127.0.0.{100 + i}" for i in range(20)]
        return await self._wrong_logins(sources, attempts=100, parallel=20, owner_during=True)

    async def _wrong_logins(
        self, sources: list[str], attempts: int, parallel: int, owner_during: bool = False
    ) -> Outcome:
        """``attempts`` wrong logins, ``parallel`` at a time, spread over ``sources``; the
        owner's own login from 127.0.0.2 after them, or (``owner_during``) in the middle."""
        wrong = orjson.dumps({"email": self.victim.email, "password": "not-the-password-1"})
        right = orjson.dumps({"email": self.victim.email, "password": self.victim.password})
        url = self.hub.url + "/auth/login"
        answers: list[Answer] = []
        clients = [new_client(source=src) for src in sources]
        owner = new_client(source="127.0.0.2")
        owner_login: asyncio.Task[Answer] | None = None
        try:
            for i in range(0, attempts, parallel):
                if owner_during and owner_login is None and i >= attempts // 2:
                    owner_login = asyncio.create_task(call(owner, "POST", url, right))
                batch = range(i, min(i + parallel, attempts))
                answers += await asyncio.gather(
                    *(call(clients[j % len(clients)], "POST", url, wrong) for j in batch)
                )
            if owner_login is None:
                owner_login = asyncio.create_task(call(owner, "POST", url, right))
            login = await owner_login
        finally:
            for http in [*clients, owner]:
                await http.close()
        statuses: dict[str, int] = {}
        for a in answers:
            statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
        where = sources[0] if len(sources) == 1 else f"{len(sources)} addresses"
        when = "meanwhile" if owner_during else "then"
        return Outcome(
            f"{attempts} wrong logins from {where}, {when} the owner's from 127.0.0.2",
            login,
            clear=login.status == 200 and all(a.status in (401, 429) for a in answers),
            slowest=max([login.seconds, *(a.seconds for a in answers)]),
            repeats=attempts + 1,
            extra={
                "burst_statuses": statuses,
                "burst_last": answers[-1].head() if answers else "",
                "burst_answer_max_s": round(max(a.seconds for a in answers), 3),
                "note": "answer = the owner's login from another address",
            },
        )
