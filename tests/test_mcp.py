"""MCP servers per thread: tools round trip, crash isolation, caps, timeouts, refresh, kill."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spindle.actors.appserver.turns import build_turns
from spindle.actors.runtime import ThreadHandle
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.protocol.appserver import v2
from spindle.protocol.events import (
    ItemCompletedEvent,
    ItemStartedEvent,
    TaskCompleteEvent,
)
from spindle.protocol.items import McpToolCallItem, TextInput
from spindle.protocol.ops import UserInputOp

from .helpers import collect_until

TINY = str(Path(__file__).parent / "mcp_servers" / "tiny.py")


def tiny(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [TINY], "startup_timeout_sec": 20, **extra}


def outputs(mock: MockModel) -> list[str]:
    """The function_call_output texts the model was sent, in its last request."""
    return [item["output"] for item in mock.requests[-1].json()["input"] if item["type"] == "function_call_output"]


def tool_names(mock: MockModel, request: int = -1) -> list[str]:
    return [tool["name"] for tool in mock.requests[request].json()["tools"]]


async def run(thread: ThreadHandle, text: str) -> list[Any]:
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text=text)]))
        return [ev.msg for ev in await collect_until(events, TaskCompleteEvent)]


def mcp_items(msgs: list[Any]) -> list[tuple[str, McpToolCallItem]]:
    return [(type(m).__name__, m.item) for m in msgs
            if isinstance(m, ItemStartedEvent | ItemCompletedEvent) and isinstance(m.item, McpToolCallItem)]


async def test_tool_round_trip_through_the_model(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(mcp_servers={"docs": tiny()}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__add", arguments={"a": 2, "b": 3}, call_id="call_1"),
                          Text(text="five"), thread_id=thread.thread_id)
        msgs = await run(thread, "add them")
        assert {"mcp__docs__add", "mcp__docs__echo", "shell"} <= set(tool_names(mock_model, 0))
        spec = next(t for t in mock_model.requests[0].json()["tools"] if t["name"] == "mcp__docs__add")
        assert spec["parameters"]["properties"].keys() == {"a", "b"} and spec["description"] == "Add two numbers."
        assert outputs(mock_model) == ['{"result": 5}']
        (kind1, started), (kind2, done) = mcp_items(msgs)
        assert (kind1, started.status, started.server, started.tool, started.arguments) == (
            "ItemStartedEvent", "inProgress", "docs", "add", {"a": 2, "b": 3})
        assert (kind2, done.status, done.id) == ("ItemCompletedEvent", "completed", "call_1")
        assert done.result == {"content": [{"type": "text", "text": "5"}], "structuredContent": {"result": 5}}
        assert done.error is None and done.duration_ms is not None
        # the item is in the rollout: the thread's turns are rebuilt with it
        turns = build_turns(thread.rollout.source.iter_forward_from(0))
        rebuilt = [item for item in turns[-1].items if isinstance(item, v2.McpToolCallThreadItem)]
        assert [(i.id, i.server, i.tool, i.status) for i in rebuilt] == [("call_1", "docs", "add", "completed")]
