"""This runtime as one node of several that share threads through one thread store (PostgreSQL).

The store holds every thread's records, leases and metadata; a node keeps the threads it has
loaded in its own CODEX_HOME, as rollout files, and runs them there as any runtime does. What a
node adds:
- a loaded thread holds the store's lease for it (`StoreReplica`): taken before the thread loads,
  renewed while it is loaded, let go when it unloads; every batch the writer drains goes to the
  store first, fenced by that lease;
- a thread is resumed from the store: its records are written over the node's copy first, so a
  thread last run by another node (or by this one before a crash) resumes with its one history;
- a thread this node had before it joined (or a fork, copied locally) is seeded into the store
  with its first write;
- a node that loses a thread's lease (it expired while the node was paused or cut off, and another
  node took it) drops the thread: its subscribers hear why, and nothing more of it is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog
import trio
from trio_typing import TaskStatus

from spindle.persistence.paths import ThreadStoreError, rollout_path
from spindle.persistence.replica import DEFAULT_TTL_S, StoreReplica
from spindle.persistence.thread_store import ThreadNotFoundError, ThreadStore, iter_records

log = structlog.get_logger(__name__)


NODE_MAX_AGE_TTLS = 3
"""A node not heard from for this many lease TTLs is taken off the `nodes` table."""
LEAVE_DEADLINE_S = 5.0


@dataclass(frozen=True, kw_only=True)
class Owner:
    """Another node, running a thread: requests for it are forwarded to `url`."""

    node_id: str
    url: str


class NodeDirectory(Protocol):
    """Where nodes say they are alive (the PostgreSQL store's `nodes` table)."""

    async def heartbeat(self, node_id: str, url: str) -> None: ...

    async def reap_nodes(self, *, max_age_s: float) -> int: ...

    async def lease_holder(self, thread_id: str, *, max_age_s: float) -> tuple[str, str] | None:
        """(node id, URL) of the live node whose unexpired lease holds the thread, if one does."""

    async def leave(self, node_id: str) -> None: ...


class Cluster:
    """The shared store and this node's name in it (see the module doc). With a `directory`, the
    node says it is alive there every third of a lease TTL while it runs (`run`), at `url` (the
    address it advertises to clients and other nodes), and reaps nodes long silent."""

    def __init__(self, store: ThreadStore, node_id: str, *, ttl_s: float = DEFAULT_TTL_S,
                 directory: NodeDirectory | None = None, url: str = "") -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.directory = directory
        self.url = url

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat until cancelled, then leave the directory (ThreadStoreError if the first
        heartbeat fails: a node that cannot reach the store does not start)."""
        directory = self.directory
        if directory is None:
            task_status.started()
            return
        await directory.heartbeat(self.node_id, self.url)
        log.info("node joined", node_id=self.node_id, url=self.url)
        task_status.started()
        try:
            while True:
                await trio.sleep(self.ttl_s / 3)
                try:
                    await directory.heartbeat(self.node_id, self.url)
                    if reaped := await directory.reap_nodes(max_age_s=NODE_MAX_AGE_TTLS * self.ttl_s):
                        log.info("reaped silent nodes", count=reaped)
                except ThreadStoreError as exc:
                    log.warning("node heartbeat failed; trying again", error=str(exc))
        finally:
            with trio.move_on_after(LEAVE_DEADLINE_S) as leaving:
                leaving.shield = True
                try:
                    await directory.leave(self.node_id)
                except ThreadStoreError as exc:
                    log.warning("could not leave the node directory; the node is reaped later", error=str(exc))

    async def owner(self, thread_id: str) -> Owner | None:
        """The other live node that runs `thread_id` now (it holds the thread's lease), where
        clients reach it; None when no other node does, or it advertises no address (the thread
        is this node's to load, or the store says why not)."""
        if self.directory is None:
            return None
        try:
            held = await self.directory.lease_holder(thread_id, max_age_s=NODE_MAX_AGE_TTLS * self.ttl_s)
        except ValueError:  # not a thread id: the request's own handler says so
            return None
        if held is None or held[0] == self.node_id or not held[1]:
            return None
        return Owner(node_id=held[0], url=held[1])

    def replica(self, thread_id: str, on_lost: Callable[[str], None]) -> StoreReplica:
        return StoreReplica(self.store, thread_id, self.node_id, ttl_s=self.ttl_s, on_lost=on_lost)

    async def local_path(self, home: Path, thread_id: str) -> Path | None:
        """Where this node keeps the thread's rollout; None if the store does not know it."""
        try:
            meta = await self.store.metadata(thread_id)
        except ThreadNotFoundError:
            return None
        return rollout_path(home, thread_id, datetime.fromisoformat(meta.created_at))

    async def materialize(self, thread_id: str, path: Path) -> bool:
        """Write the store's records of the thread over the node's copy at `path` (atomically);
        False, leaving the copy as it is, when the store holds no more lines than it (every line
        reaches the store before the copy, so the copy is then whole, or ahead: a seed that was
        cut short, which the copy finishes).
        Call it holding the thread's lease, so the records are final."""
        lines = [record.line() async for record in iter_records(self.store, thread_id)]
        if len(lines) <= await trio.to_thread.run_sync(_line_count, path):
            return False  # the copy is as long (the store is written first) or the store lacks lines: seed it
        await trio.to_thread.run_sync(_replace, path, b"".join(lines))
        return True


def _line_count(path: Path) -> int:
    """Whole lines in the node's copy (0 if it has none)."""
    try:
        with path.open("rb") as file:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _replace(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".materialize-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
