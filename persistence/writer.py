"""The rollout writer: one actor per materialized thread, owning its file.

Commands arrive on a bounded channel (`AddItems`, `Flush`, `Shutdown`); the writer drains what is
queued, encodes it to whole lines and appends them with one `os.write`, in order. A failed or
short write is cut back to the last whole line (`ftruncate`), and the lines stay queued for the
next attempt: never duplicated, never lost, never torn. Data reaches the kernel at every batch
(so `kill -9` loses at most a line being written); `fsync` happens on flush and on shutdown.

Opening, writing, truncating, syncing and closing the file run in a worker thread
(`trio.to_thread`), one call per batch, so the event loop never waits on the disk; the writer's
state is touched by one call at a time, since the actor awaits each before the next. A failure
is reported (`on_error`) before the batch counts as handled (`wait_handled`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from spindle.protocol.rollout import RolloutItem, RolloutLineOut, line_type

if TYPE_CHECKING:
    from .replica import StoreReplica

from .paths import ThreadStoreError, home_advice, home_of_rollout, timestamp

log = structlog.get_logger(__name__)

WRITER_CHANNEL_CAPACITY = 64
"""Batches queued for a writer before the thread actor waits (lossless backpressure)."""
CLOSE_DEADLINE_S = 5.0
"""How long closing the file may wait for a worker thread, even when cancelled."""
CANCEL_DRAIN_S = 10.0
"""How long a cancelled writer keeps writing what its thread still hands it before it ends."""

_encoder = msgspec.json.Encoder()


class RolloutWriteError(OSError):
    """A rollout that cannot be created, written or synced; the message names the file, the cause
    and what to do."""


@dataclass(kw_only=True)
class Reply:
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None


@dataclass(frozen=True)
class AddItems:
    items: list[RolloutItem]


@dataclass(frozen=True)
class Flush:
    reply: Reply
    fsync: bool = True


@dataclass(frozen=True)
class Shutdown:
    reply: Reply


Command = AddItems | Flush | Shutdown


class RolloutWriter:
    """The writer actor. `await nursery.start(writer.run, receive)`; open errors raise from start."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool,
        next_ordinal: int = 0,
        truncate_to: int | None = None,
        on_error: Callable[[str], None] = lambda message: None,
        on_written: Callable[[list[RolloutItem], list[int], int], None] = lambda items, offsets, size: None,
        replica: StoreReplica | None = None,
    ) -> None:
        self.path = path
        self._replica = replica
        self._create = create
        self._truncate_to = truncate_to
        self._ordinal = next_ordinal
        self._pending = bytearray()
        self._pending_items: list[RolloutItem] = []
        self._pending_at: list[int] = []
        """Each pending item, and where its line begins in `_pending`."""
        self._on_written = on_written
        self._fd = -1
        self._size = 0
        self._failing = False
        self._on_error = on_error
        self._handled = 0
        self._progress = trio.Event()
        self._ended = False
        self.done = trio.Event()
        """Set once the writer has ended and closed its file: nothing more reaches it after."""

    @property
    def next_ordinal(self) -> int:
        """The ordinal the next item handed to the writer will take."""
        return self._ordinal

    async def wait_handled(self, count: int) -> None:
        """Until `count` AddItems have been handled (written, or failed and reported), or the writer ended."""
        while self._handled < count and not self._ended:
            await self._progress.wait()

    def _advance(self, handled: int) -> None:
        self._handled += handled
        self._progress.set()
        self._progress = trio.Event()

    def _fail(self, action: str, exc: OSError) -> RolloutWriteError:
        advice = home_advice(home_of_rollout(self.path), exc.errno)
        error = RolloutWriteError(f"failed to {action} rollout {self.path}: {exc.strerror or exc}; {advice}")
        error.errno = exc.errno
        return error

    def _open(self) -> None:
        """Open (or create) the file; in a worker thread. RolloutWriteError names the cause."""
        try:
            if self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
            else:
                flags = os.O_WRONLY | os.O_APPEND
            fd = os.open(self.path, flags, 0o644)
            try:
                self._size = os.fstat(fd).st_size
                if self._truncate_to is not None and self._size > self._truncate_to:
                    os.ftruncate(fd, self._truncate_to)  # drop a torn last line before appending
                    self._size = self._truncate_to
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._fail("create" if self._create else "open", exc) from None

    def _encode(self, items: list[RolloutItem]) -> None:
        ts = timestamp()
        for item in items:
            line = RolloutLineOut(timestamp=ts, ordinal=self._ordinal, type=line_type(item), payload=item)
            self._ordinal += 1
            self._pending_items.append(item)
            self._pending_at.append(len(self._pending))
            self._pending += _encoder.encode(line)
            self._pending += b"\n"

    def _write(self) -> str | None:
        """Append everything pending; on failure cut back to the last whole line and keep it queued."""
        if not self._pending:
            return None
        data = bytes(self._pending)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                log.exception("could not cut a failed rollout write back", path=str(self.path))
            return str(self._fail("write", exc))
        self._size += len(data)
        self._pending.clear()
        return None

    def _write_and_sync(self, sync: bool) -> tuple[str | None, str | None]:
        """(write error, sync error) of one batch; in a worker thread. Syncs only after a good write.

        The file is open only for the batch: 10,000 loaded threads would otherwise hold 10,000
        descriptors (beside their leases' 10,000) and run the process out of them."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            return str(self._fail("open", exc)), None
        try:
            write_error = self._write()
            if write_error is not None or not sync:
                return write_error, None
            try:
                os.fsync(self._fd)
            except OSError as exc:
                return None, str(self._fail("sync", exc))
            return None, None
        finally:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                log.warning("could not close the rollout after a write", path=str(self.path))

    async def run(
        self,
        receive: trio.MemoryReceiveChannel[Command],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await trio.to_thread.run_sync(self._open)
            task_status.started()
            with receive:
                try:
                    await self._serve(receive)
                except trio.Cancelled:
                    # The thread actor, cancelled too, closes its rollout in a shielded scope as it
                    # ends: write what is queued and what it still sends, then end as cancelled.
                    with trio.move_on_after(CANCEL_DRAIN_S) as drain:
                        drain.shield = True
                        await self._serve(receive)
                    raise
        finally:
            self._ended = True
            self._progress.set()
            try:
                await self._close()
            finally:
                self.done.set()

    async def _serve(self, receive: trio.MemoryReceiveChannel[Command]) -> None:
        """Handle commands in batches until `Shutdown` or the channel's end."""
        async for command in receive:
            batch = [command]
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            with trio.CancelScope(shield=True):  # a batch is written whole, or its replies would never come
                stop = await self._handle(batch)
            if stop:
                return

    async def _close(self) -> None:
        """Close the file, even when cancelled (a worker call that already opened it left `_fd` set)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            closed: list[bool] = []

            def close() -> None:
                try:
                    os.close(fd)
                finally:  # the descriptor is released even when close reports an error
                    closed.append(True)

            with trio.move_on_after(CLOSE_DEADLINE_S) as cleanup:
                cleanup.shield = True
                await trio.to_thread.run_sync(close)
            if not closed:  # no worker thread came free in time: never leak the descriptor
                os.close(fd)

    def _report_written(self, base: int) -> None:
        """Tell the thread's source which items reached the file, and where their lines begin."""
        items, self._pending_items = self._pending_items, []
        at, self._pending_at = self._pending_at, []
        if items:
            self._on_written(items, [base + offset for offset in at], self._size)

    async def _replicate(self) -> str | None:
        """The shared store's copy first (a node may write only what the store took); the
        error that kept the batch out of it, if one did: the batch stays queued."""
        if self._replica is None or not self._pending:
            return None
        try:
            await self._replica.append_lines(bytes(self._pending))
        except ThreadStoreError as exc:
            return f"the thread store did not take rollout lines of {self.path.name}: {exc}"
        return None

    async def _handle(self, batch: list[Command]) -> bool:
        """Process one drained batch; True after a Shutdown."""
        for command in batch:
            if isinstance(command, AddItems):
                self._encode(command.items)
        sync = any(isinstance(c, Flush) and c.fsync for c in batch)  # a shutdown is synced with the runtime's end
        base = self._size
        write_error = await self._replicate()
        sync_error = None
        if write_error is None:
            write_error, sync_error = await trio.to_thread.run_sync(self._write_and_sync, sync)
        if write_error is None:
            self._failing = False
            self._report_written(base)
        elif not self._failing:
            self._failing = True
            self._on_error(write_error)
        self._advance(sum(isinstance(c, AddItems) for c in batch))
        stop = False
        for command in batch:
            if isinstance(command, Flush | Shutdown):
                syncs = isinstance(command, Flush) and command.fsync
                command.reply.error = write_error or (sync_error if syncs else None)
                command.reply.done.set()
                stop = stop or isinstance(command, Shutdown)
        return stop
