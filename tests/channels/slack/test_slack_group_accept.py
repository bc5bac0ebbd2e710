"""Group commit on the ack path: concurrent accepts share transactions, each caller
returns only after its own message is committed, and a failed commit fails its callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bot.types import Inbound, Sender
from channels.slack.adapter import GroupAccept

pytestmark = pytest.mark.filterwarnings("error")


def _inbound(n: int) -> Inbound:
    return Inbound("slack", f"Ev{n:04d}", Sender("U0ALICE01"), f"m{n}", "dm:D0ALICE01")


class Store:
    """accept_many on a dict; each commit waits for the test to release it."""

    def __init__(self) -> None:
        self.rows: dict[str, Inbound] = {}
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.called = asyncio.Event()
        self.fail: Exception | None = None

    async def accept_many(self, inbounds: Sequence[Inbound]) -> list[bool]:
        self.batches.append([i.external_id for i in inbounds])
        self.called.set()
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        fresh = []
        for inbound in inbounds:
            fresh.append(inbound.external_id not in self.rows)
            self.rows.setdefault(inbound.external_id, inbound)
        return fresh


async def test_concurrent_accepts_share_commits_and_see_their_own_result() -> None:
    store = Store()
    group = GroupAccept(store.accept_many, limit=50)
    first = asyncio.ensure_future(group.accept(_inbound(0)))
    await asyncio.wait_for(store.called.wait(), 5)
    # while the first commit runs, 120 more arrive (one a duplicate of the first)
    others = [asyncio.ensure_future(group.accept(_inbound(n))) for n in range(1, 120)]
    duplicate = asyncio.ensure_future(group.accept(_inbound(0)))
    store.release.set()
    results = await asyncio.wait_for(asyncio.gather(first, *others, duplicate), 5)

    assert results == [True] * 120 + [False]
    assert sorted(store.rows) == [f"Ev{n:04d}" for n in range(120)]
    assert [len(b) for b in store.batches] == [1, 50, 50, 20]


async def test_a_failed_commit_fails_each_of_its_callers() -> None:
    store = Store()
    store.fail = RuntimeError("database is down")
    store.release.set()
    group = GroupAccept(store.accept_many)
    results = await asyncio.gather(
        *(group.accept(_inbound(n)) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert store.rows == {}
    store.fail = None
    assert await group.accept(_inbound(1)) is True
