"""The rollout writer: one actor per materialized thread, owning its file.

Commands arrive on a bounded channel (`AddItems`, `Flush`, `Shutdown`); the writer drains what is
queued, encodes it to whole lines and appends them with one `os.write`, in order. A failed or
short write is cut back to the last whole line (`ftruncate`), and the lines stay queued for the
next attempt: never duplicated, never lost, never torn. Data reaches the kernel at every batch
(so `kill -9` loses at most a line being written); `fsync` happens on flush and on shutdown.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog
import trio
from trio_typing import TaskStatus

from spindle.protocol.rollout import RolloutItem, RolloutLineOut, line_type

from .paths import timestamp

log = structlog.get_logger(__name__)

WRITER_CHANNEL_CAPACITY = 64
"""Batches queued for a writer before the thread actor waits (lossless backpressure)."""

_encoder = msgspec.json.Encoder()


class RolloutWriteError(OSError):
    pass


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
    ) -> None:
        self.path = path
        self._create = create
        self._truncate_to = truncate_to
        self._ordinal = next_ordinal
        self._pending = bytearray()
        self._fd = -1
        self._size = 0
        self._failing = False
        self._on_error = on_error

    def _open(self) -> None:
        if self._create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
        else:
            flags = os.O_WRONLY | os.O_APPEND
        self._fd = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        if self._truncate_to is not None and self._size > self._truncate_to:
            os.ftruncate(self._fd, self._truncate_to)  # drop a torn last line before appending
            self._size = self._truncate_to

    def _encode(self, items: list[RolloutItem]) -> None:
        ts = timestamp()
        for item in items:
            line = RolloutLineOut(timestamp=ts, ordinal=self._ordinal, type=line_type(item), payload=item)
            self._ordinal += 1
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
            message = f"failed to write rollout {self.path}: {exc.strerror or exc}"
            if not self._failing:
                self._failing = True
                self._on_error(message)
            return message
        self._size += len(data)
        self._pending.clear()
        self._failing = False
        return None

    async def run(
        self,
        receive: trio.MemoryReceiveChannel[Command],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._open()
        task_status.started()
        try:
            with receive:
                async for command in receive:
                    batch = [command]
                    while True:
                        try:
                            batch.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    if self._handle(batch):
                        return
        finally:
            os.close(self._fd)

    def _handle(self, batch: list[Command]) -> bool:
        """Process one drained batch; True after a Shutdown."""
        for command in batch:
            if isinstance(command, AddItems):
                self._encode(command.items)
        error = self._write()
        stop = False
        for command in batch:
            if isinstance(command, Flush | Shutdown):
                if error is None and (isinstance(command, Shutdown) or command.fsync):
                    try:
                        os.fsync(self._fd)
                    except OSError as exc:
                        error = f"failed to sync rollout {self.path}: {exc.strerror}"
                command.reply.error = error
                command.reply.done.set()
                stop = stop or isinstance(command, Shutdown)
        return stop
