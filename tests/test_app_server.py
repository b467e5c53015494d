"""The app-server over in-memory streams: framing, handshake, errors, subscriptions, turns."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from spindle.actors.appserver import AppServer, connection
from spindle.actors.runtime.manager import open_runtime
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, in_memory
from spindle.protocol.config import Config


async def start_thread(client: RpcClient, **params: Any) -> dict[str, Any]:
    """thread/start, once its `thread/started` has arrived too."""
    thread = (await client.call("thread/start", params))["thread"]
    await client.wait_for("thread/started", lambda p: p["thread"]["id"] == thread["id"])
    return thread  # type: ignore[no-any-return]


# --- framing and handshake ----------------------------------------------------


async def test_requests_before_initialize_are_refused(server: AppServer) -> None:
    async with in_memory(server) as client:
        with pytest.raises(RpcFailure) as err:
            await client.call("thread/start", {})
        assert (err.value.code, err.value.message) == (-32600, "Not initialized")
        result = await client.initialize()
        assert result["userAgent"].startswith("spindle/0.171.0 (")
        with pytest.raises(RpcFailure, match="Already initialized"):
            await client.initialize()


async def test_ids_are_echoed_as_given_and_jsonrpc_is_optional(client: RpcClient) -> None:
    reply = await client.send_message({"jsonrpc": "2.0", "id": "str-id-1", "method": "thread/loaded/list", "params": {}})
    assert reply == {"id": "str-id-1", "result": {"data": [], "nextCursor": None}}
    reply = await client.send_message({"id": 9001, "method": "thread/loaded/list"})
    assert reply["id"] == 9001 and "error" not in reply


async def test_bad_lines_get_errors_or_logs_and_the_server_keeps_serving(client: RpcClient) -> None:
    before = len(client.lines)
    await client.send_raw(b"{this is not json\n")
    await client.send_raw(b'[{"id": 1, "method": "thread/loaded/list"}]\n')
    await client.send_raw(b'{"id": null, "method": "thread/loaded/list"}\n')
    await client.send_raw(b'{"method": "foo/notify", "params": {}}\n')
    await client.send_raw(b'{"id": 424242, "result": {}}\n')
    with pytest.raises(RpcFailure) as err:
        await client.call("does/notExist", {})
    assert err.value.code == -32601 and "unknown method `does/notExist`" in err.value.message
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/delete", {"threadId": "x"})
    assert err.value.code == -32601 and "not supported by Spindle" in err.value.message
    with pytest.raises(RpcFailure) as err:
        await client.call("thread/start", {"cwd": 123})
    assert err.value.code == -32602 and "`$.cwd`" in err.value.message
    with pytest.raises(RpcFailure, match="missing required field `input`"):
        await client.call("turn/start", {"threadId": "x"})
    with pytest.raises(RpcFailure, match="missing field `params`"):
        await client.call("thread/read")
    with pytest.raises(RpcFailure, match="bogus"):
        await client.call("turn/start", {"threadId": "x", "input": [{"type": "bogus"}]})
    with pytest.raises(RpcFailure, match="invalid thread id"):
        await client.call("turn/start", {"threadId": "not-a-uuid", "input": []})
    unknown = "00000000-0000-7000-8000-000000000000"
    with pytest.raises(RpcFailure, match=f"thread not found: {unknown}"):
        await client.call("turn/start", {"threadId": unknown, "input": [{"type": "text", "text": "hi"}]})
    with pytest.raises(RpcFailure, match=f"no rollout found for thread id {unknown}"):
        await client.call("thread/resume", {"threadId": unknown})
    with pytest.raises(RpcFailure, match=f"thread not loaded: {unknown}"):
        await client.call("thread/read", {"threadId": unknown})
    # the five unanswerable lines drew no reply at all; the server still serves
    answered = [line for line in client.lines[before:] if "id" in line]
    assert all(line["id"] != 1 and line["id"] != 424242 for line in answered)
    assert (await client.call("thread/loaded/list", {}))["data"] == []


async def test_notifications_carry_no_id_and_an_emission_time(client: RpcClient) -> None:
    await start_thread(client)
    note = await client.wait_for("thread/started")
    assert "id" not in note and isinstance(note["emittedAtMs"], int)


# --- turns --------------------------------------------------------------------


async def test_a_turn_streams_notifications_in_the_codex_order(client: RpcClient, mock_model: MockModel) -> None:
    mock_model.default = lambda _: Text(text="Done", chunks=2)
    thread = await start_thread(client)
    mark = len(client.notifications)
    turn = await client.run_turn(thread["id"], "hello")
    methods = client.methods(mark)
    assert methods == [
        "thread/status/changed", "turn/started",
        "item/started", "item/completed",                       # the user message
        "item/started", "item/agentMessage/delta", "item/agentMessage/delta", "item/completed",
        "thread/tokenUsage/updated",
        "thread/status/changed", "turn/completed",
    ]
    notes = client.notifications[mark:]
    assert notes[0]["params"]["status"] == {"type": "active", "activeFlags": []}
    assert notes[-2]["params"]["status"] == {"type": "idle"}
    completed = [n["params"] for n in notes if n["method"] == "item/completed"]
    assert completed[-1]["item"] == {"type": "agentMessage", "id": completed[-1]["item"]["id"], "text": "Done", "phase": None}
    assert all(isinstance(p["completedAtMs"], int) for p in completed)
    assert turn["status"] == "completed"
    assert [item["type"] for item in turn["items"]] == ["userMessage", "agentMessage"]


async def test_interrupt_ends_the_turn_interrupted(client: RpcClient, mock_model: MockModel) -> None:
    gate = trio.Event()
    mock_model.default = lambda _: Text(text="slow", gate=gate)
    thread = await start_thread(client)
    mark = len(client.notifications)
    turn = (await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "go"}]}))["turn"]
    assert turn["status"] == "inProgress"
    await client.wait_for("turn/started", after=mark)
    with pytest.raises(RpcFailure, match="no active turn to interrupt"):
        await client.call("turn/interrupt", {"threadId": thread["id"], "turnId": "another"})
    assert await client.call("turn/interrupt", {"threadId": thread["id"], "turnId": turn["id"]}) == {}
    done = await client.wait_for("turn/completed", after=mark)
    assert done["params"]["turn"]["status"] == "interrupted"
    gate.set()


async def test_steer_joins_the_active_turn(client: RpcClient, mock_model: MockModel) -> None:
    gate = trio.Event()
    mock_model.default = lambda _: Text(text="ok", gate=gate)
    thread = await start_thread(client)
    turn = (await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "one"}]}))["turn"]
    with pytest.raises(RpcFailure, match="expected active turn `nope` but found"):
        await client.call("turn/steer", {"threadId": thread["id"], "expectedTurnId": "nope", "input": [{"type": "text", "text": "x"}]})
    steered = await client.call("turn/steer", {"threadId": thread["id"], "expectedTurnId": turn["id"], "input": [{"type": "text", "text": "two"}]})
    assert steered == {"turnId": turn["id"]}
    gate.set()
    await client.wait_for("turn/completed")


async def test_a_failed_turn_completes_failed_with_its_error(client: RpcClient, mock_model: MockModel) -> None:
    from spindle.actors.testing.mock_model import HttpError

    mock_model.default = lambda _: HttpError(status=400, message="bad request from the model")
    thread = await start_thread(client)
    mark = len(client.notifications)
    turn = await client.run_turn(thread["id"], "fail")
    assert turn["status"] == "failed" and turn["error"]["message"]
    assert "error" in client.methods(mark)


# --- subscriptions ------------------------------------------------------------


async def test_last_unsubscribe_closes_the_thread(server: AppServer, client: RpcClient) -> None:
    thread = await start_thread(client)
    async with in_memory(server) as other:
        await other.initialize()
        resumed = await other.call("thread/resume", {"threadId": thread["id"]})
        assert resumed["thread"]["id"] == thread["id"]
        assert await other.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "unsubscribed"}
        assert await other.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "notSubscribed"}
    assert thread["id"] in (await client.call("thread/loaded/list", {}))["data"]

    mark = len(client.notifications)
    assert await client.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "unsubscribed"}
    closed = await client.wait_for("thread/closed", after=mark)
    assert closed["params"] == {"threadId": thread["id"]}
    status = [n["params"] for n in client.notifications[mark:] if n["method"] == "thread/status/changed"]
    assert status == [{"threadId": thread["id"], "status": {"type": "notLoaded"}}]
    assert (await client.call("thread/loaded/list", {}))["data"] == []
    assert await client.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "notLoaded"}


async def test_events_reach_every_subscribed_connection(server: AppServer, client: RpcClient) -> None:
    thread = await start_thread(client)
    await client.run_turn(thread["id"], "materialize")
    async with in_memory(server) as other:
        await other.initialize()
        await other.call("thread/resume", {"threadId": thread["id"]})
        turn = await client.run_turn(thread["id"], "both see this")
        seen = await other.wait_for("turn/completed", lambda p: p["turn"]["id"] == turn["id"])
        assert seen["params"]["turn"]["status"] == "completed"


async def test_archive_unloads_and_unarchive_restores(client: RpcClient) -> None:
    thread = await start_thread(client)
    await client.run_turn(thread["id"], "keep me")
    mark = len(client.notifications)
    await client.call("thread/archive", {"threadId": thread["id"]})
    await client.wait_for("thread/archived", after=mark)
    assert client.methods(mark)[-2:] == ["thread/status/changed", "thread/archived"]
    listed = await client.call("thread/list", {"archived": True})
    assert [t["id"] for t in listed["data"]] == [thread["id"]]
    assert listed["data"][0]["status"] == {"type": "notLoaded"}
    restored = await client.call("thread/unarchive", {"threadId": thread["id"]})
    assert restored["thread"]["preview"] == "keep me"
    assert [t["id"] for t in (await client.call("thread/list", {}))["data"]] == [thread["id"]]


async def test_archive_clears_stale_subscriptions_before_resume(server: AppServer, client: RpcClient) -> None:
    """Inside one server: after archive and unarchive, a resume elsewhere is the thread's
    only subscriber, so this client sees none of its turns and its unsubscribe closes the thread."""
    thread = await start_thread(client)
    await client.run_turn(thread["id"], "materialize")
    await client.call("thread/archive", {"threadId": thread["id"]})
    await client.call("thread/unarchive", {"threadId": thread["id"]})
    mark = len(client.notifications)
    async with in_memory(server) as other:
        await other.initialize()
        await other.call("thread/resume", {"threadId": thread["id"]})
        assert (await other.run_turn(thread["id"], "elsewhere"))["status"] == "completed"
        assert "turn/started" not in client.methods(mark)
        assert await other.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "unsubscribed"}
        await other.wait_for("thread/closed")
    assert (await client.call("thread/loaded/list", {}))["data"] == []


async def test_read_list_name_and_model_list(client: RpcClient) -> None:
    thread = await start_thread(client)
    await client.run_turn(thread["id"], "first")
    await client.run_turn(thread["id"], "second")
    read = await client.call("thread/read", {"threadId": thread["id"], "includeTurns": True})
    turns = read["thread"]["turns"]
    assert [t["status"] for t in turns] == ["completed", "completed"]
    assert turns[0]["items"][0] == {"type": "userMessage", "id": turns[0]["items"][0]["id"], "content": [{"type": "text", "text": "first", "text_elements": []}]}
    assert (await client.call("thread/read", {"threadId": thread["id"]}))["thread"]["turns"] == []

    mark = len(client.notifications)
    assert await client.call("thread/name/set", {"threadId": thread["id"], "name": "my thread"}) == {}
    note = await client.wait_for("thread/name/updated", after=mark)
    assert note["params"] == {"threadId": thread["id"], "threadName": "my thread"}
    listed = (await client.call("thread/list", {"limit": 1}))["data"]
    assert listed[0]["name"] == "my thread" and listed[0]["preview"] == "first"

    models = (await client.call("model/list", {}))["data"]
    assert models[0]["model"] == "mock-model" and models[0]["isDefault"] is True


async def test_rollback_and_revert_drop_turns(client: RpcClient) -> None:
    thread = await start_thread(client)
    ids = [(await client.run_turn(thread["id"], f"turn {n}"))["id"] for n in range(4)]
    rolled = await client.call("thread/rollback", {"threadId": thread["id"], "numTurns": 1})
    assert [t["id"] for t in rolled["thread"]["turns"]] == ids[:3]
    mark = len(client.notifications)
    reverted = await client.call("thread/revert", {"threadId": thread["id"], "beforeTurnId": ids[1]})
    assert [t["id"] for t in reverted["thread"]["turns"]] == ids[:1]
    await client.wait_for("thread/reverted", after=mark)
    with pytest.raises(RpcFailure, match="not found in thread"):
        await client.call("thread/revert", {"threadId": thread["id"], "beforeTurnId": ids[3]})


async def test_fork_copies_history_and_subscribes(client: RpcClient) -> None:
    thread = await start_thread(client)
    await client.run_turn(thread["id"], "base")
    mark = len(client.notifications)
    forked = await client.call("thread/fork", {"threadId": thread["id"]})
    fork = forked["thread"]
    assert fork["forkedFromId"] == thread["id"] and fork["id"] != thread["id"]
    assert [t["status"] for t in fork["turns"]] == ["completed"]
    await client.wait_for("thread/started", lambda p: p["thread"]["id"] == fork["id"], after=mark)
    turn = await client.run_turn(fork["id"], "on the fork")
    assert turn["status"] == "completed"


# --- backpressure ----------------------------------------------------------------


async def test_a_full_request_queue_answers_overloaded(monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Config]) -> None:
    monkeypatch.setattr(connection, "REQUEST_QUEUE", 2)
    async with open_runtime(make_config()) as manager, trio.open_nursery() as nursery:
        server: AppServer = await nursery.start(AppServer(manager).run)
        async with in_memory(server) as client:
            await client.initialize()
            burst = b"".join(
                json.dumps({"id": n, "method": "thread/loaded/list", "params": {}}).encode() + b"\n" for n in range(200)
            )
            await client.send_raw(burst)
            await client.wait_until(lambda: len([line for line in client.lines if line.get("id") in range(200)]) == 200)
            replies = [line for line in client.lines if line.get("id") in range(200)]
            overloaded = [r for r in replies if "error" in r]
            assert overloaded, "a burst past the queue must draw -32001"
            assert all(r["error"]["code"] == -32001 and r["error"]["message"] == "Server overloaded; retry later." for r in overloaded)
            assert any("result" in r for r in replies)
            assert (await client.call("thread/loaded/list", {}))["data"] == []
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_reads_does_not_stall_the_thread(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Config], mock_model: MockModel
) -> None:
    """Its outgoing queue fills, its pump waits, its subscription lags; the actor runs on. Once the
    client reads again it gets every lifecycle notification in order, and a warning saying that
    only streaming deltas were dropped."""
    monkeypatch.setattr(connection, "OUTGOING_QUEUE", 4)
    monkeypatch.setattr(connection, "PUMP_BUFFER", 8)
    mock_model.default = lambda _: Text(text="x" * 50, chunks=50)
    async with open_runtime(make_config()) as manager, trio.open_nursery() as nursery:
        server: AppServer = await nursery.start(AppServer(manager).run)
        client_side, server_side = trio.testing.lockstep_stream_pair()
        nursery.start_soon(server.serve, server_side, server_side)
        await client_side.send_all(b'{"id":1,"method":"initialize","params":{"clientInfo":{"name":"t","version":"1"}}}\n')
        with manager.subscribe_thread_created() as created:
            await client_side.send_all(b'{"id":2,"method":"thread/start","params":{}}\n')
            with trio.fail_after(10):
                handle = manager.get_thread(await created.receive())
        with trio.fail_after(20):
            for n in range(3):
                assert (await handle.ask(f"turn {n}")) == "x" * 50
        seen = b""
        with trio.fail_after(10):
            while seen.count(b'"turn/completed"') < 3:
                seen += await client_side.receive_some()
        lines = [json.loads(line) for line in seen.splitlines()]
        completed = [line["params"]["turn"]["status"] for line in lines if line.get("method") == "turn/completed"]
        assert completed == ["completed"] * 3  # lifecycle notifications all arrive, in order
        warnings = [line["params"]["message"] for line in lines if line.get("method") == "warning"]
        assert warnings and all("streaming deltas or token counts" in w for w in warnings)
        assert sum(line.get("method") == "item/agentMessage/delta" for line in lines) < 150  # deltas were dropped
        nursery.cancel_scope.cancel()
