"""MCP servers per thread: tools round trip, crash isolation, caps, timeouts, refresh, kill."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from spindle.actors.appserver.turns import build_turns
from spindle.actors.runtime import ThreadHandle, mcp_client, mcp_tools
from spindle.actors.runtime.mcp_manager import McpServer
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.protocol.appserver import v2items
from spindle.protocol.config import McpServerConfig
from spindle.protocol.events import (
    ItemCompletedEvent,
    ItemStartedEvent,
    McpStartupUpdateEvent,
    TaskCompleteEvent,
)
from spindle.protocol.items import McpToolCallItem, TextInput
from spindle.protocol.mcp import tool_name
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
    filtered = tiny(enabled_tools=["add", "echo"], disabled_tools=["echo"])
    async with make_runtime(mcp_servers={"docs": tiny(), "some.tools": filtered}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__add", arguments={"a": 2, "b": 3}, call_id="call_1"),
                          Text(text="five"), thread_id=thread.thread_id)
        msgs = await run(thread, "add them")
        assert {"mcp__docs__add", "mcp__docs__echo", "exec_command"} <= set(tool_names(mock_model, 0))
        assert [n for n in tool_names(mock_model, 0) if "some" in n] == ["mcp__some_tools__add"]  # allow, then deny
        spec = next(t for t in mock_model.requests[0].json()["tools"] if t["name"] == "mcp__docs__add")
        assert spec["parameters"]["properties"].keys() == {"a", "b"} and spec["description"] == "Add two numbers."
        assert outputs(mock_model) == ['{"result": 5}']
        (kind1, started), (kind2, done) = mcp_items(msgs)
        assert (kind1, started.status, started.server, started.tool, started.arguments) == (
            "ItemStartedEvent", "inProgress", "docs", "add", {"a": 2, "b": 3})
        assert (kind2, done.status, done.id) == ("ItemCompletedEvent", "completed", "call_1")
        assert done.result == {"content": [{"type": "text", "text": "5"}], "structuredContent": {"result": 5}}
        assert done.error is None and done.duration_ms is not None

        mock_model.script(Call(name="mcp__docs__boom", arguments={}), Call(name="mcp__docs__add", arguments="{not json"),
                          Text(text="hm"), thread_id=thread.thread_id)
        msgs = await run(thread, "break things")
        boom, bad_args = outputs(mock_model)[-2:]
        assert "kaboom" in boom and bad_args.startswith('[{"type": "text", "text": "err: ')
        completed = [item for kind, item in mcp_items(msgs) if kind == "ItemCompletedEvent"]
        assert [(i.tool, i.status) for i in completed] == [("boom", "failed"), ("add", "failed")]
        assert completed[0].result is not None and completed[0].error is None  # isError keeps the result
        assert completed[1].result is None and (completed[1].error or "").startswith("err: ")
        # the item is in the rollout: the thread's turns are rebuilt with it
        turns = build_turns(thread.rollout.source.iter_forward_from(0))
        rebuilt = [item for item in turns[0].items if isinstance(item, v2items.McpToolCallThreadItem)]
        assert [(i.id, i.server, i.tool, i.status) for i in rebuilt] == [("call_1", "docs", "add", "completed")]


async def started(thread: ThreadHandle) -> dict[str, Any]:
    with trio.fail_after(30):
        await thread.wait_mcp_started()
    return {name: (s.status, s.error) for name, s in thread.mcp_servers.items()}


BROKEN = {
    "missing": {"command": "/nonexistent/spindle-mcp-server"},
    "exits": {"command": sys.executable, "args": ["-c", "import sys; sys.stderr.write('bye now'); sys.exit(3)"]},
    "silent": {"command": "sleep", "args": ["30"], "startup_timeout_sec": 0.5},
    "garbage": {"command": "sh", "args": ["-c", "while true; do echo 'not json {'; sleep 0.01; done"],
                "startup_timeout_sec": 0.5},
}


async def test_a_broken_server_fails_alone_and_turns_go_on(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(mcp_servers={"docs": tiny(), **BROKEN}) as rt:
        thread = await rt.start_thread()
        statuses = await started(thread)
        assert statuses["docs"] == ("ready", None)
        assert {name: status for name, (status, _) in statuses.items() if name != "docs"} == dict.fromkeys(BROKEN, "failed")
        assert "failed to start `/nonexistent/spindle-mcp-server`" in statuses["missing"][1]
        assert "bye now" in statuses["exits"][1]
        assert "MCP client for `silent` timed out after 0.5 seconds" in statuses["silent"][1]
        assert "timed out" in statuses["garbage"][1]
        mock_model.script(Call(name="mcp__docs__echo", arguments={"text": "hi"}), Text(text="ok"), thread_id=thread.thread_id)
        await run(thread, "go")
        assert outputs(mock_model) == ['{"result": "hi"}']
        assert not any(name.startswith(("mcp__missing", "mcp__silent")) for name in tool_names(mock_model))
        assert await thread.ask("still there?") == "echo: still there?"


async def test_a_slow_tool_times_out_into_an_error_output(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(mcp_servers={"docs": tiny(tool_timeout_sec=0.3)}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__slow", arguments={"seconds": 5}),
                          Call(name="mcp__docs__add", arguments={"a": 1, "b": 1}), Text(text="done"),
                          thread_id=thread.thread_id)
        with trio.fail_after(15):
            msgs = await run(thread, "be slow")
        first, second = outputs(mock_model)
        assert "tool call error: timed out awaiting tools/call after 0.3s" in first
        assert second == '{"result": 2}'  # the session is still usable
        failed = [item for kind, item in mcp_items(msgs) if kind == "ItemCompletedEvent" and item.tool == "slow"]
        assert failed[0].status == "failed" and failed[0].result is None and "timed out" in (failed[0].error or "")


async def test_a_50_mb_result_fails_that_call_only(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(mcp_servers={"docs": tiny()}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__big", arguments={"mb": 50}),
                          Call(name="mcp__docs__big", arguments={"mb": 0.5}),
                          Call(name="mcp__docs__add", arguments={"a": 2, "b": 2}), Text(text="done"),
                          thread_id=thread.thread_id)
        with trio.fail_after(30):
            await run(thread, "big")
        huge, clipped, small = outputs(mock_model)
        assert "over the 8 MiB limit" in huge and len(huge) < 1000
        assert len(clipped) < 70_000 and "bytes elided" in clipped  # 0.5 MB reaches the model clipped
        assert small == '{"result": 4}'
        assert thread.mcp_servers["docs"].status == "ready"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def test_shutdown_kills_the_servers_process_group(make_runtime: Callable[..., Any], tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    async with make_runtime(mcp_servers={"docs": tiny(env={"TINY_GRANDCHILD_PID": str(pid_file)})}) as rt:
        thread = await rt.start_thread()
        assert (await started(thread))["docs"] == ("ready", None)
        server_pid = thread.mcp_servers["docs"].process.pid
        grandchild = int(pid_file.read_text())
        assert server_pid is not None and alive(server_pid) and alive(grandchild)
    assert not alive(server_pid)
    with trio.fail_after(5):
        while alive(grandchild):  # noqa: ASYNC110 - a process of another parent: nothing to wait on
            await trio.sleep(0.05)


def test_line_splitter_caps_lines_without_buffering_them() -> None:
    splitter = mcp_client.LineSplitter(limit=10)
    assert splitter.feed(b'{"a":1}\n{"id":7,') == [b'{"a":1}']
    out = splitter.feed(b'"result":"' + b"x" * 100)
    assert out == [] and len(splitter._buf) == 0
    (over,) = splitter.feed(b'"}\n')
    assert isinstance(over, mcp_client.Oversized) and over.size == 120
    reply = over.error_reply()
    assert reply is not None and reply.root.id == 7  # type: ignore[union-attr]
    assert splitter.feed(b"ok\n\n") == [b"ok"]


async def test_a_late_subscriber_gets_the_startup_statuses_so_far(make_runtime: Callable[..., Any]) -> None:
    async with make_runtime(mcp_servers={"docs": tiny(), "gone": {"command": "/nonexistent/x"}}) as rt:
        thread = await rt.start_thread()
        await started(thread)
        with thread.events() as events:
            seen = sorted((m.server, m.status) for m in (events.receive_nowait().msg for _ in range(4))
                          if isinstance(m, McpStartupUpdateEvent))
        assert seen == [("docs", "ready"), ("docs", "starting"), ("gone", "failed"), ("gone", "starting")]


@pytest.mark.parametrize("holder", [False, True], ids=["alone", "child-holds-stdout"])
async def test_a_server_that_dies_after_start_fails_its_later_calls_at_once(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path, holder: bool
) -> None:
    env = {"TINY_GRANDCHILD_PID": str(tmp_path / "grandchild.pid")} if holder else {}
    async with make_runtime(mcp_servers={"docs": tiny(env=env)}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__crash", arguments={}), Call(name="mcp__docs__add", arguments={"a": 1, "b": 2}),
                          Text(text="done"), thread_id=thread.thread_id)
        with trio.fail_after(10):  # well under the 60 s tool timeout
            await run(thread, "crash")
        crashed, after = outputs(mock_model)
        assert "tool call error" in crashed and "tool call error" in after
        assert thread.mcp_servers["docs"].status == "failed"
        assert "the MCP server exited" in (thread.mcp_servers["docs"].error or "")
        assert await thread.ask("fine?") == "echo: fine?"


@pytest.fixture(params=["sse", "json"])
async def http_server(nursery: trio.Nursery, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """tiny.py serving streamable HTTP on a free loopback port, answering in SSE events or in
    JSON bodies; yields its URL once it listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TINY_HTTP_PORT": str(port)}
    if request.param == "json":
        env["TINY_JSON_RESPONSE"] = "1"
    proc = await nursery.start(partial(trio.run_process, [sys.executable, TINY], env=env, check=False,
                                       stderr=subprocess.DEVNULL))
    with trio.fail_after(20):
        while True:
            try:
                await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                break
            except OSError:
                await trio.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()


async def test_streamable_http_server_round_trip_and_result_cap(
    make_runtime: Callable[..., Any], mock_model: MockModel, http_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_client, "HTTP_MAX_RESPONSE_BYTES", 200_000)
    monkeypatch.setenv("TINY_TOKEN", "sekrit")
    server = {"url": http_server, "bearer_token_env_var": "TINY_TOKEN", "http_headers": {"X-Team": "a"}}
    async with make_runtime(mcp_servers={"web": server}) as rt:
        thread = await rt.start_thread()
        assert (await started(thread))["web"] == ("ready", None)
        mock_model.script(Call(name="mcp__web__add", arguments={"a": 20, "b": 22}),
                          Call(name="mcp__web__big", arguments={"mb": 1}),
                          Call(name="mcp__web__echo", arguments={"text": "still"}), Text(text="ok"),
                          thread_id=thread.thread_id)
        with trio.fail_after(20):
            await run(thread, "web")
        added, big, echoed = outputs(mock_model)
        assert added == '{"result": 42}'
        assert "tool call error" in big and "limit" in big
        assert echoed == '{"result": "still"}'


def test_http_headers_carry_the_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOK", "abc")
    monkeypatch.delenv("NOPE", raising=False)
    cfg = McpServerConfig(url="http://x/mcp", bearer_token_env_var="TOK", http_headers={"X-A": "1"})
    assert mcp_client.http_headers(cfg) == {"X-A": "1", "Authorization": "Bearer abc"}
    with pytest.raises(mcp_client.McpClientError, match="NOPE"):
        mcp_client.http_headers(McpServerConfig(url="http://x/mcp", bearer_token_env_var="NOPE"))


def test_tool_names_are_sanitized_bounded_and_unique() -> None:
    assert tool_name("docs", "add") == "mcp__docs__add"
    assert tool_name("my docs", "find.all/v2") == "mcp__my_docs__find_all_v2"
    long = tool_name("srv", "t" * 100)
    assert len(long.encode()) == 64 and long.startswith("mcp__srv__ttt") and long[-13] == "_"
    assert long != tool_name("srv", "t" * 101)  # the hash keeps cut names apart
    clash = tool_name("a", "b.c", taken={"mcp__a__b_c"})
    assert clash.startswith("mcp__a__b_c_") and clash != "mcp__a__b_c" and len(clash) <= 64


def test_the_app_server_imports_the_mcp_sdk_only_when_a_server_starts() -> None:
    code = "import sys, spindle.actors.appserver, spindle.actors.cli.serve; print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'pydantic')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # the SDK (and pydantic) cost ~0.4 s of start-up


async def test_a_call_failing_as_its_timeout_fires_still_fails_its_item(
    make_runtime: Callable[..., Any], mock_model: MockModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fails_when_cancelled(*_: Any) -> Any:
        async def late() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise RuntimeError("late failure")  # noqa: B012

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late)
            await trio.sleep_forever()

    monkeypatch.setattr(McpServer, "_call_while_alive", fails_when_cancelled)
    async with make_runtime(mcp_servers={"docs": tiny(tool_timeout_sec=0.2)}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__echo", arguments={"text": "x"}), Text(text="done"),
                          thread_id=thread.thread_id)
        with trio.fail_after(15):
            msgs = await run(thread, "go")
        assert "tool call error: RuntimeError: late failure" in outputs(mock_model)[0]
        (completed,) = [item for kind, item in mcp_items(msgs) if kind == "ItemCompletedEvent"]
        assert completed.status == "failed"


async def test_structured_content_is_passed_on_unchecked_against_the_output_schema(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    """As Codex does: no client-side JSON Schema check (a server's `pattern` would run on the loop)."""
    async with make_runtime(mcp_servers={"docs": tiny()}) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__mismatched", arguments={"code": "a" * 40 + "!"}), Text(text="done"),
                          thread_id=thread.thread_id)
        with trio.fail_after(15):
            await run(thread, "go")
        assert outputs(mock_model) == ['{"code": "' + "a" * 40 + '!"}']


async def test_capped_sse_stream_passes_whole_events_whatever_the_chunking() -> None:
    events = b"event: message\r\ndata: {\"a\": 1}\r\n\r\n" + b"data: two\n\n" + b"data: three\r\n\r\n"

    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i in range(len(events)):
                yield events[i:i + 1]

    out = [piece async for piece in mcp_client._CappedStream(Chunks(), None, sse=True)]
    assert out == [events[:34], events[34:45], events[45:]]


async def test_every_page_of_tools_list_is_offered(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(mcp_servers={"docs": tiny(env={"TINY_PAGE_SIZE": "2"})}) as rt:
        thread = await rt.start_thread()
        assert (await started(thread))["docs"] == ("ready", None)
        assert {tool.name for tool in thread.mcp_servers["docs"].tools} == {
            "add", "echo", "big", "slow", "mismatched", "boom", "crash"}


async def test_a_tool_with_an_oversized_schema_is_left_out_and_the_rest_offered(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(mcp_servers={"docs": tiny(env={"TINY_HUGE_SCHEMA": "1"})}) as rt:
        thread = await rt.start_thread()
        assert (await started(thread))["docs"] == ("ready", None)
        assert await thread.ask("hi") == "echo: hi"
        offered = tool_names(mock_model)
        assert "mcp__docs__echo" in offered and "mcp__docs__big" not in offered


def test_an_input_schema_becomes_an_object_with_properties() -> None:
    assert mcp_tools.parameters({}) == {"type": "object", "properties": {}}
    assert mcp_tools.parameters({"type": "object", "required": ["a"]}) == {"type": "object", "properties": {}, "required": ["a"]}
    kept = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    assert mcp_tools.parameters(kept) == kept
