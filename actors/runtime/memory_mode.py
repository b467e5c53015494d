"""A thread's memory mode (Codex's `thread/memoryMode/set` and `set_thread_memory_mode`): whether
the thread may feed memory generation.

Spindle generates no memories, so the mode changes nothing it does: it is kept, on the thread and
in the rollout as Codex 0.171 keeps it, so a resume (by Spindle or by Codex) finds it. Codex
appends line 0's `session_meta` again, without its `git`, with `memory_mode` set; its readers take
the last `session_meta` that carries a `memory_mode`, and a thread without one is enabled.
"""

from __future__ import annotations

import msgspec
import trio

from spindle.persistence.paths import ThreadStoreError
from spindle.persistence.rollout import ThreadRollout
from spindle.protocol.events import CodexErrorInfo
from spindle.protocol.settings import MemoryMode


class MemoryModeError(Exception):
    """The mode could not be kept; the thread's mode is unchanged."""

    def __init__(self, message: str, info: CodexErrorInfo = "other") -> None:
        super().__init__(message)
        self.info: CodexErrorInfo = info


def recorded_memory_mode(recorded: str | None) -> MemoryMode:
    """The mode a rollout records (its last `session_meta` carrying one Spindle knows, as the
    resume scan found it), else enabled, as Codex reads a rollout without one."""
    return "disabled" if recorded == "disabled" else "enabled"


async def store_memory_mode(rollout: ThreadRollout, writers: trio.Nursery, mode: MemoryMode) -> MemoryMode:
    """Write `mode` to the thread's rollout and wait until it is on disk; returns it. A thread that
    has had no turn yet gets its rollout now, as Codex does. MemoryModeError if it cannot be kept
    (an ephemeral thread has no rollout)."""
    if rollout.ephemeral:
        raise MemoryModeError(f"ephemeral thread does not support memory mode updates: {rollout.meta.id}", "bad_request")
    try:
        await rollout.materialize(writers)
        rollout.record([msgspec.structs.replace(rollout.meta, memory_mode=mode)])
        await rollout.flush()
    except (OSError, ThreadStoreError, trio.TooSlowError) as exc:
        raise MemoryModeError(f"failed to set thread memory mode: {exc}") from None
    return mode
