"""Idle threads unload: once no client retains a thread and it has had no turn for
`thread_unload_delay_secs`, it is flushed, its writer lease let go and `thread/closed` sent; a client
that subscribes again in the meantime keeps it. An observer gets the events but keeps nothing loaded.

Time here is trio's `MockClock`: it jumps to the next deadline once every task has waited
`AUTOJUMP_S` of real time (so the real file writes and loopback HTTP of a turn finish first)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from spindle.actors.appserver import AppServer
from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.runtime.tools import ToolRegistry
from spindle.actors.testing.mock_model import Call, MockModel, Stall, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, in_memory
from spindle.persistence.lease import WriterLeaseHeldError
from spindle.protocol.config import Config

from .test_approvals import COMMAND, AskingTool

DELAY_S = 30.0
AUTOJUMP_S = 0.05
PATIENCE_S = 1_000.0
"""How long (in virtual seconds) a client waits for an answer or a notification here."""


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=AUTOJUMP_S)


@asynccontextmanager
async def served(config: Config, tools: ToolRegistry | None = None) -> AsyncIterator[tuple[ThreadManager, AppServer]]:
    async with open_runtime(config, tools=tools) as manager, trio.open_nursery() as nursery:
        yield manager, await nursery.start(AppServer(manager).run)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_of(server: AppServer, *, experimental: bool = False) -> AsyncIterator[RpcClient]:
    async with in_memory(server) as client:
        client.timeout = PATIENCE_S
        await client.initialize(experimental=experimental)
        yield client


async def thread_with_a_turn(client: RpcClient, text: str = "hello") -> tuple[dict[str, Any], int]:
    """A new thread that has run one turn, and where the client's notifications stand after it."""
    thread = (await client.call("thread/start", {}))["thread"]
    await client.run_turn(thread["id"], text)
    return thread, len(client.notifications)


def loaded(manager: ThreadManager, thread_id: str) -> bool:
    return manager.running(thread_id) is not None


async def test_an_unsubscribed_thread_unloads_after_the_delay_and_not_before(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=DELAY_S)) as (manager, server), client_of(server) as client:
        thread, mark = await thread_with_a_turn(client)
        assert await client.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "unsubscribed"}
        left_at = trio.current_time()
        await trio.sleep(DELAY_S - 1)
        assert loaded(manager, thread["id"])
        assert (await client.call("thread/loaded/list", {}))["data"] == [thread["id"]]
        assert "thread/closed" not in client.methods(mark)
        closed = await client.wait_for("thread/closed", after=mark)
        assert trio.current_time() - left_at >= DELAY_S
        assert closed["params"] == {"threadId": thread["id"]}
        assert client.methods(mark) == ["thread/status/changed", "thread/closed"]
        assert client.notifications[mark]["params"]["status"] == {"type": "notLoaded"}
        assert not loaded(manager, thread["id"]) and (await client.call("thread/loaded/list", {}))["data"] == []
        assert '"type":"task_complete"' in Path(thread["path"]).read_text()  # flushed before it let go


async def test_a_client_that_subscribes_again_keeps_the_thread_loaded(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=DELAY_S)) as (manager, server), client_of(server) as client:
        thread, mark = await thread_with_a_turn(client)
        await client.call("thread/unsubscribe", {"threadId": thread["id"]})
        await trio.sleep(DELAY_S / 2)
        resumed = await client.call("thread/resume", {"threadId": thread["id"]})
        assert resumed["thread"]["id"] == thread["id"]
        await trio.sleep(DELAY_S * 4)
        assert loaded(manager, thread["id"]) and "thread/closed" not in client.methods(mark)
        assert (await client.run_turn(thread["id"], "still here"))["status"] == "completed"


async def test_the_last_client_to_disconnect_starts_the_countdown_too(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=DELAY_S)) as (manager, server):
        async with client_of(server) as client:
            thread = (await client.call("thread/start", {}))["thread"]
            await client.run_turn(thread["id"], "hello")
        gone_at = trio.current_time()
        handle = manager.get_thread(thread["id"])
        await trio.sleep(DELAY_S - 1)
        assert loaded(manager, thread["id"])
        with trio.fail_after(PATIENCE_S):
            await handle.wait_closed()
        assert trio.current_time() - gone_at >= DELAY_S
        assert not loaded(manager, thread["id"])


async def test_an_unloaded_thread_is_free_for_another_runtime(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    """The writer lease goes with the unload: another runtime on the same home resumes the thread."""
    config = make_config(thread_unload_delay_secs=DELAY_S)
    async with served(config) as (manager, server), client_of(server) as client, open_runtime(config) as other:
        thread, mark = await thread_with_a_turn(client, "first")
        await client.call("thread/unsubscribe", {"threadId": thread["id"]})
        with pytest.raises(WriterLeaseHeldError, match="is being written by spindle pid"):
            await other.resume_thread(thread["id"])
        await client.wait_for("thread/closed", after=mark)
        resumed = await other.resume_thread(thread["id"])
        assert await resumed.ask("second") == "echo: second"


async def test_a_turn_its_client_left_runs_to_its_end_then_the_thread_unloads(
    make_config: Callable[..., Config], mock_model: MockModel, clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=DELAY_S)) as (manager, server), \
            client_of(server, experimental=True) as watcher:
        async with client_of(server) as client:
            thread = (await client.call("thread/start", {}))["thread"]
            await watcher.call("thread/subscribe", {"threadId": thread["id"], "observe": True})
            mock_model.script(Stall(seconds=DELAY_S * 3, then=Text(text="late but whole")), thread_id=thread["id"])
            await client.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "slow"}]})
        completed = await watcher.wait_for("turn/completed")
        ended_at = trio.current_time()
        assert completed["params"]["turn"]["status"] == "completed"  # not aborted by the unload
        await watcher.wait_for("thread/closed")
        assert trio.current_time() - ended_at >= DELAY_S


async def test_an_approval_waiting_for_a_client_keeps_the_thread_loaded(
    make_config: Callable[..., Config], mock_model: MockModel, clock: MockClock
) -> None:
    config = make_config(thread_unload_delay_secs=DELAY_S)
    async with served(config, ToolRegistry([AskingTool()])) as (manager, server):
        async with client_of(server) as first:
            thread = (await first.call("thread/start", {}))["thread"]
            mock_model.script(Call(name="ask", arguments="f"), Text(text="done"), thread_id=thread["id"])
            turn = (await first.call("turn/start", {"threadId": thread["id"], "input": [{"type": "text", "text": "go"}]}))["turn"]
            await first.wait_request(COMMAND)
        await trio.sleep(DELAY_S * 5)  # no client: the request waits, and its turn keeps the thread
        assert loaded(manager, thread["id"]) and manager.get_thread(thread["id"]).pending_requests()
        async with client_of(server) as second:
            await second.call("thread/resume", {"threadId": thread["id"]})
            request = await second.wait_request(COMMAND)
            await second.answer(request["id"], {"decision": "accept"})
            assert (await second.wait_turn(turn["id"]))["status"] == "completed"


async def test_an_observer_hears_the_thread_but_does_not_keep_it_loaded(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=DELAY_S)) as (manager, server), \
            client_of(server) as owner, client_of(server, experimental=True) as watcher:
        thread = (await owner.call("thread/start", {}))["thread"]
        watched = await watcher.call("thread/subscribe", {"threadId": thread["id"], "observe": True})
        assert watched["status"] == "subscribed"
        turn = await owner.run_turn(thread["id"], "for all to see")
        seen = await watcher.wait_for("turn/completed")
        assert seen["params"]["turn"]["id"] == turn["id"]
        mark = len(watcher.notifications)
        await owner.call("thread/unsubscribe", {"threadId": thread["id"]})
        left_at = trio.current_time()
        await watcher.wait_for("thread/closed", after=mark)
        assert trio.current_time() - left_at >= DELAY_S
        assert watcher.methods(mark) == ["thread/status/changed", "thread/closed"]
        assert not loaded(manager, thread["id"])
        await owner.wait_for("thread/closed")  # the client that let go is told as well


async def test_a_retaining_subscriber_keeps_the_thread_and_an_observer_can_become_one(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=DELAY_S)) as (manager, server), \
            client_of(server) as owner, client_of(server, experimental=True) as other:
        thread = (await owner.call("thread/start", {}))["thread"]
        await other.call("thread/subscribe", {"threadId": thread["id"], "observe": True})
        await other.call("thread/subscribe", {"threadId": thread["id"]})  # now it retains the thread
        await owner.call("thread/unsubscribe", {"threadId": thread["id"]})
        await trio.sleep(DELAY_S * 4)
        assert loaded(manager, thread["id"])
        await other.call("thread/subscribe", {"threadId": thread["id"], "observe": True})  # and lets go of it again
        await other.wait_for("thread/closed")
        assert not loaded(manager, thread["id"])


async def test_observing_needs_a_loaded_thread_and_the_experimental_api(
    make_config: Callable[..., Config], clock: MockClock
) -> None:
    async with served(make_config(thread_unload_delay_secs=0)) as (manager, server), \
            client_of(server) as plain, client_of(server, experimental=True) as client:
        thread = (await client.call("thread/start", {}))["thread"]
        with pytest.raises(RpcFailure, match="thread/subscribe requires experimentalApi capability"):
            await plain.call("thread/subscribe", {"threadId": thread["id"]})
        await client.call("thread/unsubscribe", {"threadId": thread["id"]})
        await client.wait_for("thread/closed")
        answer = await client.call("thread/subscribe", {"threadId": thread["id"], "observe": True})
        assert answer == {"status": "notLoaded"}  # observing never loads a thread
        assert not loaded(manager, thread["id"])
