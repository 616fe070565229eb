"""The shared polling helper (tests/waiting.py): it returns what it waited for, and a
condition that never holds fails with a message naming it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ..waiting import WaitTimeout, async_wait_for, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_for(lambda: next(calls) >= 3 and "third", "the third call") == "third"


def test_wait_for_names_what_never_happened() -> None:
    with pytest.raises(WaitTimeout, match=r"waiting for the moon \(last: 0\)") as info:
        wait_for(lambda: 0, "the moon", timeout=0.05)
    assert isinstance(info.value, AssertionError)  # reported as a failed assertion


async def test_async_wait_for_awaits_a_condition_that_returns_an_awaitable() -> None:
    polls: list[int] = []

    async def ready() -> dict[str, int] | None:
        polls.append(1)
        await asyncio.sleep(0)
        return {"polls": len(polls)} if len(polls) == 3 else None

    assert await async_wait_for(ready, "the third poll") == {"polls": 3}


async def test_async_wait_for_lets_the_loop_run_between_polls() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    assert await async_wait_for(done.is_set, "the callback") is True


async def test_async_wait_for_names_what_never_happened() -> None:
    with pytest.raises(WaitTimeout, match="waiting for the flag"):
        await async_wait_for(lambda: False, "the flag", timeout=0.05)
