"""`spindle demo`: threads streaming one turn each against the built-in mock model."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio

from spindle.actors.runtime import open_runtime
from spindle.actors.runtime.config import apply_overrides
from spindle.actors.testing.mock_model import MockModel, Text, mock_config
from spindle.protocol.events import AgentMessageDeltaEvent, TaskCompleteEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp


async def run_demo(threads: int, overrides: Sequence[str]) -> int:
    """Two threads (or `threads`) each stream one turn from the mock model to stdout."""
    home = Path(tempfile.mkdtemp(prefix="spindle-demo-"))
    async with trio.open_nursery() as nursery:
        reply = Text(text="Hello from the mock model, streamed in pieces.", chunks=8, delay=0.02)
        mock = await nursery.start(MockModel(default=lambda _: reply, record=False).run)
        config = mock_config(mock, home, **apply_overrides({}, overrides))
        async with open_runtime(config) as rt:
            handles = [await rt.start_thread() for _ in range(threads)]
            out = sys.stdout

            async def drive(n: int) -> None:
                thread = handles[n]
                with thread.events() as events:
                    await thread.submit(UserInputOp(items=[TextInput(text=f"hello from thread {n}")]))
                    async for ev in events:
                        if isinstance(ev.msg, AgentMessageDeltaEvent):
                            out.write(f"thread {n} ({thread.thread_id[-8:]}): {ev.msg.delta!r}\n")
                        elif isinstance(ev.msg, TaskCompleteEvent):
                            out.write(f"thread {n} done: {ev.msg.last_agent_message}\n")
                            return

            async with trio.open_nursery() as turns:
                for n in range(threads):
                    turns.start_soon(drive, n)
        nursery.cancel_scope.cancel()
    return 0
