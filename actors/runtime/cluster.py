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
from datetime import datetime
from pathlib import Path

import structlog
import trio

from spindle.persistence.paths import rollout_path
from spindle.persistence.replica import DEFAULT_TTL_S, StoreReplica
from spindle.persistence.thread_store import ThreadNotFoundError, ThreadStore, iter_records

log = structlog.get_logger(__name__)


class Cluster:
    """The shared store and this node's name in it (see the module doc)."""

    def __init__(self, store: ThreadStore, node_id: str, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl_s = ttl_s

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
        False, leaving the copy as it is, when the store has none (the copy seeds it later).
        Call it holding the thread's lease, so the records are final."""
        lines = [record.line() async for record in iter_records(self.store, thread_id)]
        if not lines:
            return False
        await trio.to_thread.run_sync(_replace, path, b"".join(lines))
        return True


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
