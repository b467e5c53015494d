"""A thread's side of persistence: its in-memory source, its outbox, and the channel to its writer.

The thread actor records items here as it goes; at each await point the outbox goes to the
`RolloutWriter` as one batch. Nothing reaches disk before `materialize` (the first user turn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from spindle.protocol.rollout import RolloutItem, SessionMeta

from .source import InMemoryRolloutSource
from .writer import (
    WRITER_CHANNEL_CAPACITY,
    AddItems,
    Command,
    Flush,
    Reply,
    RolloutWriteError,
    RolloutWriter,
    Shutdown,
)

REPLY_TIMEOUT_S = 30.0
"""How long a flush or shutdown waits for the writer's answer."""


class ThreadRollout:
    """A thread's side of persistence: its in-memory source, its outbox and (once materialized)
    the channel to its writer actor. `ephemeral` rollouts keep the source and never touch disk.

    The source always starts with `session_meta`, so its indices match the file's lines.
    """

    def __init__(
        self,
        *,
        path: Path,
        meta: SessionMeta,
        source: InMemoryRolloutSource | None = None,
        materialized: bool = False,
        ephemeral: bool = False,
        good_size: int | None = None,
        index: RolloutIndex | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.source = source if source is not None else InMemoryRolloutSource([meta])
        self.ephemeral = ephemeral
        self.materialized = materialized
        self.index = index
        self._good_size = good_size
        self._outbox: list[RolloutItem] = []
        self._send: trio.MemorySendChannel[Command] | None = None
        self.on_error: Callable[[str], None] = lambda message: None

    @property
    def persisted(self) -> bool:
        return self.materialized and not self.ephemeral

    def record(self, items: Sequence[RolloutItem]) -> None:
        """Add items to the source now; they reach the writer at the next `drain()`."""
        self.source.append(items)
        if not self.ephemeral:
            self._outbox.extend(items)

    async def start(self, nursery: trio.Nursery, *, create: bool) -> None:
        """Start the writer actor (creating the file when `create`). OSError if it cannot open."""
        send, receive = trio.open_memory_channel[Command](WRITER_CHANNEL_CAPACITY)
        writer = RolloutWriter(
            self.path,
            create=create,
            next_ordinal=0 if create else len(self.source) - len(self._outbox),
            truncate_to=self._good_size,
            on_error=self.on_error,
        )
        try:
            await nursery.start(writer.run, receive)
        except BaseException:
            send.close()
            raise
        self._send = send

    async def materialize(self, nursery: trio.Nursery) -> None:
        """Create the file: `session_meta` first, then whatever was recorded so far; then index it."""
        if self.materialized or self.ephemeral:
            return
        await self.start(nursery, create=True)
        self.materialized = True
        self._outbox.insert(0, self.meta)
        await self.drain()
        if self.index is not None:
            self.index.materialized(self)

    def touch(self) -> None:
        """Tell the index this thread was just updated."""
        if self.index is not None and self.persisted:
            self.index.touched(self)

    async def drain(self) -> None:
        if self._send is None or not self._outbox:
            return
        items, self._outbox = self._outbox, []
        await self._send.send(AddItems(items))

    async def _call(self, make: Callable[[Reply], Command]) -> None:
        if self._send is None:
            return
        await self.drain()
        reply = Reply()
        with trio.fail_after(REPLY_TIMEOUT_S):
            await self._send.send(make(reply))
            await reply.done.wait()
        if reply.error is not None:
            raise RolloutWriteError(reply.error)

    async def flush(self) -> None:
        """Everything recorded so far is written and synced; RolloutWriteError if not."""
        await self._call(lambda reply: Flush(reply))

    async def shutdown(self) -> None:
        """Flush, sync and close the file; the writer actor ends."""
        if self._send is None:
            return
        try:
            await self._call(lambda reply: Shutdown(reply))
        finally:
            self._send.close()
            self._send = None


class RolloutIndex(Protocol):
    """Told when a rollout file comes to exist and when it changes (the thread store's index)."""

    def materialized(self, rollout: ThreadRollout) -> None: ...

    def touched(self, rollout: ThreadRollout) -> None: ...
