"""What every attack of benchmarks/attacks.py shares: the :class:`Outcome` it reports,
repeating a request for the attack's window, and :class:`AttackBase`, the run's hub,
users and sessions that the attack classes work on (``attack_worker_input.py``,
``attack_sessions.py``, ``attack_connections.py``, ``attack_logins.py``). attacks.py
combines those classes into one and calls each attack by name.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from attack_harness import Answer, HubProcess, User

BOMB_UNIT = "10**1000000000 d"


@dataclass
class Outcome:
    """What the attacker saw: the answer that decides the attack, whether it is the
    expected clear refusal (or success, for the victim's own requests), and the slowest
    answer time among the attack's requests."""

    entry: str
    answer: Answer
    clear: bool
    slowest: float
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


async def repeated(
    fire: Callable[[], Awaitable[Answer]], window: float, max_count: int = 1000
) -> list[Answer]:
    """Fire the same attack for ``window`` seconds (at least once, at most ``max_count``)."""
    answers: list[Answer] = []
    deadline = time.monotonic() + window
    while len(answers) < max_count and (not answers or time.monotonic() < deadline):
        answers.append(await fire())
        if answers[-1].status == 0:  # timed out: do not pile up more of the same
            break
    return answers


def refused_outcome(entry: str, answers: list[Answer], **extra: Any) -> Outcome:
    first = answers[0]
    return Outcome(
        entry,
        first,
        clear=all(a.refused for a in answers),
        slowest=max(a.seconds for a in answers),
        repeats=len(answers),
        extra={"answer_p50_s": round(statistics.median(a.seconds for a in answers), 4), **extra},
    )


class AttackBase:
    """The run's hub, the attacker and the victim with the run's sessions, and the seconds
    each attack repeats: what the attack classes derive from."""

    def __init__(
        self,
        hub: HubProcess,
        attacker: User,
        victim: User,
        sids: dict[str, str],
        window: float,
    ) -> None:
        self.hub = hub
        self.attacker = attacker
        self.victim = victim
        self.sids = sids  # attacker (attacked), attacker_other, victim
        self.window = window

    @property
    def sid(self) -> str:
        return self.sids["attacker"]

    async def _send_repeated(self, entry: str, body: dict[str, Any] | bytes) -> Outcome:
        answers = await repeated(lambda: self.attacker.post(f"/send/{self.sid}", body), self.window)
        return refused_outcome(entry, answers)
