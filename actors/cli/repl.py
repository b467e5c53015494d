"""Helpers for driving Spindle from `python -m trio` (top-level await).

    >>> from spindle.actors.cli import repl
    >>> rt = await repl.start(mock=True)          # a runtime, plus a mock model on loopback
    >>> t = await rt.start_thread()
    >>> await t.ask("hello")
    'echo: hello'
    >>> await repl.tail(t)                        # print this thread's events as they come
    >>> await repl.stop()

The REPL has no nursery that outlives a statement, so the runtime lives in a trio system task.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import trio

from spindle.actors.runtime.config import load_config
from spindle.actors.runtime.fanout import Subscription
from spindle.actors.runtime.handle import ThreadHandle
from spindle.actors.runtime.manager import ThreadManager, open_runtime
from spindle.actors.testing.mock_model import MockModel, mock_config
from spindle.protocol.config import Config
from spindle.protocol.events import (
    Event,
    ShutdownCompleteEvent,
    TaskCompleteEvent,
    TurnAbortedEvent,
)

from .main import leaves

_stop: trio.Event | None = None
_stopped: trio.Event | None = None


async def start(config: Config | None = None, *, mock: bool = False) -> ThreadManager:
    """Open a runtime that lives until `stop()`; with `mock=True` it talks to a loopback mock."""
    global _stop, _stopped
    if _stop is not None:
        raise RuntimeError("a REPL runtime is already running; call `await repl.stop()` first")
    ready: trio.Event = trio.Event()
    box: list[ThreadManager] = []
    failed: list[Exception] = []
    stop, stopped = trio.Event(), trio.Event()

    async def host() -> None:
        try:
            async with trio.open_nursery() as nursery:
                cfg = config
                if mock:
                    model = await nursery.start(MockModel(record=False).run)
                    cfg = mock_config(model, Path(load_config().codex_home))
                async with open_runtime(cfg) as rt:
                    box.append(rt)
                    ready.set()
                    await stop.wait()
                nursery.cancel_scope.cancel()
        except* Exception as group:  # a system task must not raise: the caller gets the error
            failed.extend(leaves(group))
        finally:
            stopped.set()
            ready.set()

    trio.lowlevel.spawn_system_task(host)
    await ready.wait()
    if failed:
        raise failed[0]
    _stop, _stopped = stop, stopped
    return box[0]


async def stop() -> None:
    """Shut the REPL runtime down (every thread flushed)."""
    global _stop, _stopped
    if _stop is None or _stopped is None:
        return
    _stop.set()
    await _stopped.wait()
    _stop = _stopped = None


async def tail(thread: ThreadHandle, *, until_turn_end: bool = True, out: TextIO = sys.stdout) -> list[Event]:
    """Write `thread`'s events to `out` as they arrive (until the turn ends); returns them."""
    seen: list[Event] = []
    events: Subscription[Event] = thread.events()
    with events:
        async for ev in events:
            seen.append(ev)
            out.write(f"[{ev.id}] {ev.msg}\n")
            if isinstance(ev.msg, ShutdownCompleteEvent):
                break
            if until_turn_end and isinstance(ev.msg, TaskCompleteEvent | TurnAbortedEvent):
                break
    return seen

