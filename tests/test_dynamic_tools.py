"""Dynamic tools: registered at thread/start, offered to the model, called back on the client that
registered them (item/tool/call), checked, persisted and restored on resume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from spindle.actors.appserver.server import AppServer
from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.approvals import ToolResult
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, in_memory
from spindle.protocol.events import DynamicToolCallRequestEvent
from spindle.protocol.items import DynamicToolSpec

from .helpers import collect_until

LOOKUP = {"type": "function", "name": "lookup_ticket", "description": "Look a ticket up.",
          "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}
TOOL_CALL = "item/tool/call"


@asynccontextmanager
async def clients(manager: ThreadManager, count: int, *, experimental: bool = True) -> AsyncIterator[list[RpcClient]]:
    """`count` initialized in-memory clients of one app-server on `manager`."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(manager).run)
        async with in_memory(server) as a, in_memory(server) as b:
            for client in (a, b)[:count]:
                await client.initialize(experimental=experimental)
            yield [a, b][:count]
        nursery.cancel_scope.cancel()


async def first_asked(*candidates: RpcClient) -> RpcClient:
    """The first of `candidates` to get an `item/tool/call` request."""
    winner: list[RpcClient] = []

    async def watch(client: RpcClient) -> None:
        await client.wait_request(TOOL_CALL)
        winner.append(client)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for client in candidates:
            nursery.start_soon(watch, client)
    return winner[0]


def outputs(mock: MockModel) -> list[str]:
    return [i["output"] for i in mock.requests[-1].json()["input"] if i["type"] == "function_call_output"]


async def start(client: RpcClient, *tools: dict[str, Any]) -> str:
    return (await client.call("thread/start", {"dynamicTools": list(tools)}))["thread"]["id"]  # type: ignore[no-any-return]


async def test_a_call_goes_to_the_registering_client_and_its_answer_to_the_model(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, clients(rt, 2) as (owner, other):
        tid = await start(owner, LOOKUP)
        await other.call("thread/resume", {"threadId": tid})
        mock_model.script(Call(name="lookup_ticket", arguments={"id": "ABC-1"}, call_id="call_dyn"), Text(text="done"),
                          thread_id=tid)
        turn = (await owner.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "look"}]}))["turn"]
        request = await owner.wait_request(TOOL_CALL)
        assert request["params"] == {"threadId": tid, "turnId": turn["id"], "callId": "call_dyn", "tool": "lookup_ticket",
                                     "namespace": None, "arguments": {"id": "ABC-1"}}
        await owner.answer(request["id"], {"contentItems": [{"type": "inputText", "text": "ticket ABC-1 is open"}],
                                           "success": True})
        assert (await owner.wait_turn(turn["id"]))["status"] == "completed"
        assert outputs(mock_model) == ["ticket ABC-1 is open"]
        await other.wait_turn(turn["id"])  # the other client has seen the whole turn...
        assert other.server_requests == []  # ...and was not asked: only the registering client is
        assert "serverRequest/resolved" not in owner.methods()  # none for a tool call, as in Codex
        offered = mock_model.requests[0].json()["tools"]
        assert {"type": "function", "name": "lookup_ticket", "description": "Look a ticket up.", "strict": False,
                "parameters": LOOKUP["inputSchema"]} in offered
        items = [n["params"]["item"] for n in owner.notifications
                 if n["method"] == "item/completed" and n["params"]["item"]["type"] == "dynamicToolCall"]
        assert [(i["tool"], i["status"], i["success"]) for i in items] == [("lookup_ticket", "completed", True)]
        assert items[0]["contentItems"] == [{"type": "inputText", "text": "ticket ABC-1 is open"}]


async def test_an_error_or_a_malformed_answer_fails_the_call_and_the_turn_goes_on(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, clients(rt, 1) as (owner,):
        tid = await start(owner, LOOKUP)
        mock_model.script(Call(name="lookup_ticket", arguments={"id": "1"}), Call(name="lookup_ticket", arguments={"id": "2"}),
                          Text(text="done"), thread_id=tid)
        turn = (await owner.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "look"}]}))["turn"]
        first = await owner.wait_request(TOOL_CALL)
        await owner.send_raw(b'{"id": %d, "error": {"code": -32601, "message": "no such tool here"}}\n' % first["id"])
        second = await owner.wait_request(TOOL_CALL, after=1)
        await owner.answer(second["id"], "not a tool result")
        assert (await owner.wait_turn(turn["id"]))["status"] == "completed"
        failed, garbled = outputs(mock_model)
        assert failed == "the tool failed: the client failed the call: no such tool here"
        assert garbled.startswith("the tool failed: the client's answer is not a tool result")


@pytest.mark.parametrize(("tool", "message"), [
    ({**LOOKUP, "name": "has space"}, "a name is 1 to 64 letters"),
    ({**LOOKUP, "name": "exec_command"}, "the name is taken"),
    ({**LOOKUP, "inputSchema": {"type": "string"}}, "inputSchema must be a JSON Schema object"),
    ({**LOOKUP, "inputSchema": [1]}, "inputSchema must be a JSON Schema object"),
])
async def test_a_bad_tool_is_refused_naming_it(
    make_runtime: Callable[..., Any], tool: dict[str, Any], message: str
) -> None:
    async with make_runtime() as rt, clients(rt, 1) as (client,):
        with pytest.raises(RpcFailure) as err:
            await start(client, tool)
        assert err.value.code == -32602 and message in err.value.message and repr(tool["name"]) in err.value.message
        with pytest.raises(RpcFailure, match="the name is taken"):
            await start(client, LOOKUP, LOOKUP)
        assert rt.list_thread_ids() == []


async def test_dynamic_tools_need_the_experimental_api(make_runtime: Callable[..., Any]) -> None:
    async with make_runtime() as rt, clients(rt, 1, experimental=False) as (client,):
        with pytest.raises(RpcFailure, match="thread/start.dynamicTools requires experimentalApi capability"):
            await start(client, LOOKUP)


async def test_deferred_and_namespaced_tools_are_callable_and_survive_a_resume(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    hidden = {**LOOKUP, "name": "read_thread", "deferLoading": True}
    namespace = {"type": "namespace", "name": "codex_tui", "description": "The TUI's tools.", "tools": [hidden]}
    async with make_runtime() as rt, clients(rt, 1) as (owner,):
        tid = await start(owner, LOOKUP, namespace)
        await owner.run_turn(tid, "hello")
        assert [t["name"] for t in mock_model.requests[-1].json()["tools"] if t["name"] in ("lookup_ticket", "read_thread")] == [
            "lookup_ticket"]  # deferred: registered, not offered
    async with make_runtime() as rt, clients(rt, 1) as (resumer,):
        await resumer.call("thread/resume", {"threadId": tid})
        mock_model.script(Call(name="read_thread", arguments={"id": "x"}), Text(text="done"), thread_id=tid)
        turn = (await resumer.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "read"}]}))["turn"]
        request = await resumer.wait_request(TOOL_CALL)  # the registering client is gone: the resumer is asked
        assert (request["params"]["tool"], request["params"]["namespace"]) == ("read_thread", "codex_tui")
        await resumer.answer(request["id"], {"contentItems": [{"type": "inputText", "text": "read it"}], "success": True})
        await resumer.wait_turn(turn["id"])
        assert outputs(mock_model) == ["read it"]
        assert "lookup_ticket" in [t["name"] for t in mock_model.requests[-1].json()["tools"]]


async def test_a_call_fails_when_its_client_leaves_and_one_client_runs_orphaned_tools(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(rt).run)
        async with in_memory(server) as a, in_memory(server) as b:
            await a.initialize(experimental=True)
            await b.initialize(experimental=True)
            async with in_memory(server) as owner:
                await owner.initialize(experimental=True)
                tid = await start(owner, LOOKUP)
                await a.call("thread/resume", {"threadId": tid})
                await b.call("thread/resume", {"threadId": tid})
                mock_model.script(Call(name="lookup_ticket", arguments={"id": "1"}),
                                  Call(name="lookup_ticket", arguments={"id": "2"}), Text(text="done"), thread_id=tid)
                turn = (await owner.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
                await owner.wait_request(TOOL_CALL)
            # the owner left mid-call: that call fails; the next goes to one of the clients still here
            asked = await first_asked(a, b)
            request = await asked.wait_request(TOOL_CALL)
            await asked.answer(request["id"], {"contentItems": [{"type": "inputText", "text": "two"}], "success": True})
            await a.wait_turn(turn["id"])
            await b.wait_turn(turn["id"])
            assert len(a.server_requests) + len(b.server_requests) == 1
            assert outputs(mock_model) == [
                "the tool failed: the client that registered this tool has disconnected", "two"]
        nursery.cancel_scope.cancel()


async def test_an_embedding_runs_its_own_tools_through_ask_and_a_call_is_kept_small(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    spec = DynamicToolSpec(name="lookup", description="Look up.", input_schema={"type": "object"})
    async with make_runtime() as rt:
        thread = await rt.start_thread(dynamic_tools=[spec])
        mock_model.script(Call(name="lookup", arguments={}), Text(text="done"), thread_id=thread.thread_id)
        assert await thread.ask("no runner") == "done"  # without a runner the call fails; nothing hangs
        assert outputs(mock_model) == ["the tool failed: no one can run this tool here"]

        async def run(request: DynamicToolCallRequestEvent) -> ToolResult:
            return ToolResult(content_items=[{"type": "inputText", "text": "x" * 200_000},
                                             {"type": "inputImage", "imageUrl": "data:image/png;base64," + "A" * 100_000}],
                              success=True)

        mock_model.script(Call(name="lookup", arguments={}), Text(text="done"), thread_id=thread.thread_id)
        assert await thread.ask("with a runner", run_tool=run) == "done"
        output = outputs(mock_model)[-1]
        assert len(output) < 70_000 and "elided" in output and output.endswith("[image: (inline data, not kept)]")


async def test_an_interrupt_while_a_client_runs_a_tool_ends_its_item(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, clients(rt, 1) as (owner,):
        tid = await start(owner, LOOKUP)
        mock_model.script(Call(name="lookup_ticket", arguments={"id": "1"}), Text(text="never"), thread_id=tid)
        turn = (await owner.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
        await owner.wait_request(TOOL_CALL)
        await owner.call("turn/interrupt", {"threadId": tid, "turnId": turn["id"]})
        assert (await owner.wait_turn(turn["id"]))["status"] == "interrupted"
        done = [n["params"]["item"] for n in owner.notifications
                if n["method"] == "item/completed" and n["params"]["item"]["type"] == "dynamicToolCall"]
        assert [i["status"] for i in done] == ["failed"]


async def test_too_many_tool_specs_are_refused(make_runtime: Callable[..., Any]) -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 500} for i in range(100)}}
    async with make_runtime() as rt, clients(rt, 1) as (client,):
        with pytest.raises(RpcFailure, match="bytes of tool specs; at most"):
            await start(client, *({**LOOKUP, "name": f"t{i}", "inputSchema": big} for i in range(8)))



async def test_an_observer_is_never_sent_a_tool_call(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    """Not the registering client once it steps back to observing, nor another observer: a tool
    call waits for a client that retains the thread."""
    async with make_runtime(thread_unload_delay_secs=60) as rt, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(rt).run)
        async with in_memory(server) as owner, in_memory(server) as watcher, in_memory(server) as driver:
            for client, experimental in ((owner, True), (watcher, True), (driver, False)):
                await client.initialize(experimental=experimental)
            tid = await start(owner, LOOKUP)
            await driver.call("thread/resume", {"threadId": tid})
            await watcher.call("thread/subscribe", {"threadId": tid, "observe": True})
            await owner.call("thread/subscribe", {"threadId": tid, "observe": True})
            mock_model.script(Call(name="lookup_ticket", arguments={"id": "ABC-1"}, call_id="call_dyn"), Text(text="done"),
                              thread_id=tid)
            with rt.get_thread(tid).events() as events:
                turn = (await driver.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "look"}]}))["turn"]
                await collect_until(events, DynamicToolCallRequestEvent)  # the call waits for a client
            await driver.call("turn/interrupt", {"threadId": tid, "turnId": turn["id"]})
            for client in (owner, watcher):
                await client.wait_turn(turn["id"])  # had either been asked, the request would have come first
                assert client.server_requests == []
        nursery.cancel_scope.cancel()
