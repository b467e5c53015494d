"""`spindle app-server --store`: real node processes on one PostgreSQL. A node killed mid-turn
loses nothing it acknowledged, and another node takes its thread once the lease runs out."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import trio

from spindle.actors.testing.mock_model import MockModel, Stall, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, subprocess_server, write_config
from spindle.persistence.pg_store import open_postgres_store
from spindle.persistence.thread_store import iter_records

from .pg_helpers import PG_DSN

TTL_S = 1.0


def node_args(schema: str, node_id: str) -> list[str]:
    return ["--store", PG_DSN, "--store-schema", schema, "--node-id", node_id, "--lease-ttl", str(TTL_S)]


def user_texts(turns: list[dict[str, Any]]) -> list[list[str]]:
    return [[item["content"][0]["text"] for item in turn["items"] if item["type"] == "userMessage"] for turn in turns]


async def resume_once_free(client: RpcClient, thread_id: str) -> dict[str, Any]:
    """`thread/resume`, again while another node's lease on the thread has not run out."""
    with trio.fail_after(TTL_S * 10):
        while True:
            try:
                return await client.call("thread/resume", {"threadId": thread_id})
            except RpcFailure as refused:
                assert "is leased to node 'node-a'" in str(refused), refused
            await trio.sleep(TTL_S / 5)


async def test_a_node_killed_mid_turn_loses_nothing_it_acknowledged(tmp_path: Path, mock_model: MockModel,
                                                                     pg_schema: str) -> None:
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    write_config(home_a, mock_model)
    write_config(home_b, mock_model)
    mock_model.script(Text(text="first answer"), Stall())
    async with subprocess_server(home_a, args=node_args(pg_schema, "node-a")) as (client, process):
        await client.initialize()
        thread_id = (await client.call("thread/start", {}))["thread"]["id"]
        await client.run_turn(thread_id, "first")
        await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "in flight"}]})
        with trio.fail_after(10):
            await mock_model.wait_requests(2)  # the model is asked only once the input is stored
        process.kill()
        await process.wait()
    mock_model.script(Text(text="second answer"))
    async with subprocess_server(home_b, args=node_args(pg_schema, "node-b")) as (client, _process):
        await client.initialize()
        listed = (await client.call("thread/list", {}))["data"]
        assert [thread["id"] for thread in listed] == [thread_id]
        read = (await client.call("thread/read", {"threadId": thread_id, "includeTurns": True}))["thread"]
        assert user_texts(read["turns"]) == [["first"], ["in flight"]]  # from the store, before any lease
        resumed = await resume_once_free(client, thread_id)
        turns = resumed["thread"]["turns"]
        assert user_texts(turns) == [["first"], ["in flight"]]
        assert [turn["status"] for turn in turns] == ["completed", "interrupted"]
        done = await client.run_turn(thread_id, "after the move")
        assert done["status"] == "completed"


async def test_a_paused_node_cannot_write_after_another_took_its_thread(tmp_path: Path, mock_model: MockModel,
                                                                         pg_schema: str) -> None:
    """SIGSTOP past the lease, another node takes the thread, SIGCONT: the paused node's writes
    are fenced off, it drops the thread, and the store holds one history."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    write_config(home_a, mock_model)
    write_config(home_b, mock_model)
    mock_model.script(Text(text="first answer"), Stall())
    async with subprocess_server(home_a, args=node_args(pg_schema, "node-a")) as (node_a, process):
        await node_a.initialize()
        thread_id = (await node_a.call("thread/start", {}))["thread"]["id"]
        await node_a.run_turn(thread_id, "first")
        await node_a.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "in flight"}]})
        with trio.fail_after(10):
            await mock_model.wait_requests(2)
        process.send_signal(signal.SIGSTOP)
        try:
            mock_model.script(Text(text="from b's model"))
            async with subprocess_server(home_b, args=node_args(pg_schema, "node-b")) as (node_b, _):
                await node_b.initialize()
                await resume_once_free(node_b, thread_id)
                assert (await node_b.run_turn(thread_id, "from b"))["status"] == "completed"
                process.send_signal(signal.SIGCONT)
                with trio.fail_after(TTL_S * 10):
                    lost = await node_a.wait_for("error", lambda p: "this node lost thread" in p["error"]["message"])
                assert thread_id in str(lost)
                read = (await node_b.call("thread/read", {"threadId": thread_id, "includeTurns": True}))["thread"]
        finally:
            process.send_signal(signal.SIGCONT)
    assert user_texts(read["turns"]) == [["first"], ["in flight"], ["from b"]]
    assert [turn["status"] for turn in read["turns"]] == ["completed", "interrupted", "completed"]
    async with open_postgres_store(PG_DSN, schema=pg_schema) as store:
        records = [record async for record in iter_records(store, thread_id)]
    assert [record.ordinal for record in records] == list(range(len(records)))
    aborted = [record for record in records if record.type == "event_msg" and b'"turn_aborted"' in bytes(record.payload)]
    assert len(aborted) == 1  # the takeover's; the paused node's own abort never reached the store
