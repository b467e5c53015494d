"""A client may connect to any node: a request for a thread another live node owns is forwarded to
that node over the app-server protocol, and the owner's notifications and server requests come
back through the node the client is connected to. Two real node processes on one PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.testing.mock_model import Call, MockModel, MockRequest, Reply, Text
from spindle.actors.testing.rpc_client import (
    RpcClient,
    RpcFailure,
    subprocess_server,
    websocket_client,
    write_config,
)

from .test_cluster_nodes import TTL_S, node_args

COMMAND = "item/commandExecution/requestApproval"


def escalating(request: MockRequest) -> Reply:
    """Asks to run a command outside the sandbox (no login shell: a profile's jobs play no part),
    then reports the command's last output line."""
    last = request.json()["input"][-1]
    if last["type"] == "function_call_output":
        return Text(text="done: " + last["output"].splitlines()[-1])
    return Call(name="exec_command", arguments={
        "cmd": "echo made > made.txt && echo made", "login": False, "sandbox_permissions": "require_escalated",
        "justification": "write a file"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def node(home: Path, mock_model: MockModel, schema: str, node_id: str,
               cwd: Path | None = None) -> AsyncIterator[tuple[RpcClient, str, trio.Process]]:
    """A node process serving stdio and a ws:// listener it advertises: its stdio client
    (initialized: the listener is bound by then), its URL and the process."""
    write_config(home, mock_model)
    url = f"ws://127.0.0.1:{free_port()}"
    args = [*node_args(schema, node_id), "--listen", url, "--advertise", url]
    async with subprocess_server(home, cwd, args=args) as (client, process):
        await client.initialize()
        yield client, url, process


async def start_owned(client: RpcClient, **params: Any) -> str:
    """A thread started on the client's node, with one turn run there (the thread is written, so
    the store has it and its lease)."""
    thread_id: str = (await client.call("thread/start", params))["thread"]["id"]
    await client.run_turn(thread_id, "on the owner")
    return thread_id


def turn_notes(client: RpcClient, thread_id: str, turn_id: str) -> list[tuple[str, Any]]:
    """The client's notifications about `thread_id` from the turn's `turn/started` to its `turn/completed`."""
    notes = [(n["method"], n["params"]) for n in client.notifications
             if isinstance(n.get("params"), dict) and n["params"].get("threadId") == thread_id]
    bounds = [n for n, (method, params) in enumerate(notes)
              if method in ("turn/started", "turn/completed") and params["turn"]["id"] == turn_id]
    assert len(bounds) == 2, bounds
    return notes[bounds[0]:bounds[1] + 1]


async def test_a_client_of_one_node_follows_a_thread_another_node_owns(
    tmp_path: Path, mock_model: MockModel, pg_schema: str
) -> None:
    mock_model.script(Text(text="owner warm-up"), Text(text="an answer from the owner"))
    async with node(tmp_path / "b", mock_model, pg_schema, "node-b") as (owner_client, _, _), \
            node(tmp_path / "a", mock_model, pg_schema, "node-a") as (_, url_a, _), \
            websocket_client(url_a) as client:
        thread_id = await start_owned(owner_client)
        await client.initialize()
        resumed = await client.call("thread/resume", {"threadId": thread_id})
        assert resumed["thread"]["id"] == thread_id
        turn = await client.run_turn(thread_id, "hello through a")
        assert turn["status"] == "completed"
        seen = turn_notes(client, thread_id, turn["id"])
        methods = [method for method, _ in seen]
        assert methods[0] == "turn/started" and methods[-1] == "turn/completed"
        first_delta = methods.index("item/agentMessage/delta")
        agent_item = max(n for n in range(first_delta) if methods[n] == "item/started")
        assert seen[agent_item][1]["item"]["type"] == "agentMessage"
        assert "item/completed" in methods[first_delta:]
        # every event the owner's own client saw, in the same order, with the same content
        await owner_client.wait_turn(turn["id"])
        assert seen == turn_notes(owner_client, thread_id, turn["id"])
        read = await client.call("thread/read", {"threadId": thread_id, "includeTurns": True})
        assert [t["status"] for t in read["thread"]["turns"]] == ["completed", "completed"]


async def test_an_approval_round_trips_through_the_node_the_client_is_connected_to(
    tmp_path: Path, mock_model: MockModel, pg_schema: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    mock_model.script(Text(text="owner warm-up"))
    mock_model.default = escalating
    async with node(tmp_path / "b", mock_model, pg_schema, "node-b", cwd=work) as (owner_client, _, _), \
            node(tmp_path / "a", mock_model, pg_schema, "node-a") as (_, url_a, _), \
            websocket_client(url_a) as client:
        thread_id = await start_owned(owner_client, cwd=str(work), approvalPolicy="on-request")
        await client.initialize()
        await client.call("thread/resume", {"threadId": thread_id})
        turn = (await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "go"}]}))["turn"]
        asked = await client.wait_request(COMMAND)
        assert asked["params"]["threadId"] == thread_id and asked["params"]["turnId"] == turn["id"]
        await owner_client.wait_request(COMMAND)  # the owner's own client is asked too; it leaves it to us
        await client.answer(asked["id"], {"decision": "accept"})
        done = await client.wait_turn(turn["id"])
        assert done["status"] == "completed"
        resolved = await client.wait_for("serverRequest/resolved")
        assert resolved["params"] == {"threadId": thread_id, "requestId": asked["id"]}
        assert "warning" not in client.methods()
    assert (work / "made.txt").read_text() == "made\n"


async def test_a_request_for_a_thread_whose_owner_died_says_so_then_is_served_here(
    tmp_path: Path, mock_model: MockModel, pg_schema: str
) -> None:
    mock_model.script(Text(text="warm-up"), Text(text="first"), Text(text="second"))
    async with node(tmp_path / "a", mock_model, pg_schema, "node-a") as (_, url_a, _), websocket_client(url_a) as client:
        await client.initialize()
        async with node(tmp_path / "b", mock_model, pg_schema, "node-b") as (owner_client, _, owner):
            thread_id = await start_owned(owner_client)
            await client.call("thread/resume", {"threadId": thread_id})
            await client.run_turn(thread_id, "first")
            owner.kill()
            await owner.wait()
        with pytest.raises(RpcFailure, match=f"thread {thread_id}.*node 'node-b'"):
            await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "lost"}]})
        with trio.fail_after(TTL_S * 10):  # once the dead owner's lease runs out, this node takes the thread
            while True:
                try:
                    await client.call("thread/resume", {"threadId": thread_id})
                    break
                except RpcFailure as refused:
                    assert "node 'node-b'" in str(refused), refused
                await trio.sleep(TTL_S / 5)
        assert (await client.run_turn(thread_id, "second"))["status"] == "completed"
