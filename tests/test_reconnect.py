"""Reconnect without loss (a Spindle extension): every notification of a thread's events carries
the event's `threadSeq`; a client that comes back resubscribes from the last one it saw and gets
what it missed, in order, or is told that it is too far behind and must re-read the thread; a
request may carry an `idempotencyKey`, so a retried `turn/start` answers the first turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from spindle.actors.appserver import AppServer, idempotency
from spindle.actors.appserver.listeners import serve
from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.runtime import replay as replay_module
from spindle.actors.runtime.fanout import Broadcaster
from spindle.actors.runtime.replay import EventLog, ReplayTooOld, SeqCounter
from spindle.actors.testing.mock_model import MockModel, Stall, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, in_memory, websocket_client
from spindle.protocol.config import Config
from spindle.protocol.events import AgentMessageDeltaEvent, Event, is_lifecycle

THREAD_EVENTS = {"thread/status/changed", "turn/started", "item/started", "item/completed", "turn/completed",
                 "item/agentMessage/delta", "thread/tokenUsage/updated"}


@asynccontextmanager
async def served(config: Config) -> AsyncIterator[tuple[ThreadManager, AppServer]]:
    async with open_runtime(config) as manager, trio.open_nursery() as nursery:
        yield manager, await nursery.start(AppServer(manager).run)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_of(server: AppServer, *, experimental: bool = True) -> AsyncIterator[RpcClient]:
    async with in_memory(server) as client:
        await client.initialize(experimental=experimental)
        yield client


def sequenced(client: RpcClient, after: int = 0) -> list[tuple[str, int]]:
    return [(n["method"], n["threadSeq"]) for n in client.notifications[after:] if "threadSeq" in n]


def text(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": value}]


# --- sequence numbers --------------------------------------------------------------


async def test_each_notification_of_a_thread_event_carries_its_thread_seq(client: RpcClient) -> None:
    thread = (await client.call("thread/start", {}))["thread"]
    started = await client.wait_for("thread/started")
    assert "threadSeq" not in started  # about the thread, but from no event of it
    mark = len(client.notifications)
    await client.run_turn(thread["id"], "hello")
    stamped = sequenced(client, mark)
    assert {method for method, _ in stamped} >= {"turn/started", "item/started", "item/completed", "turn/completed"}
    seqs = [seq for _, seq in stamped]
    assert seqs == sorted(seqs) and all(isinstance(seq, int) and 0 < seq < 2**53 for seq in seqs)
    assert {n["method"] for n in client.notifications[mark:] if "threadSeq" not in n} <= {"warning"}
    assert all("threadSeq" not in line for line in client.lines if "id" in line)  # answers carry none


async def test_the_replay_window_is_bounded_by_count_and_by_bytes() -> None:
    counter = SeqCounter(100)
    log = EventLog(counter, keep=is_lifecycle, max_events=3, max_bytes=10_000)
    floor = counter.last
    for n in range(5):
        log.publish(Event(id="s", msg=AgentMessageDeltaEvent(delta=f"d{n}", item_id="i")))
    assert log.last_seq == floor + 5
    missed, sub = log.subscribe_after(floor + 2)
    sub.close()
    assert [e.msg.delta for e in missed] == ["d2", "d3", "d4"]  # type: ignore[union-attr]
    with pytest.raises(ReplayTooOld) as too_old:
        log.subscribe_after(floor + 1)
    assert (too_old.value.oldest, too_old.value.last) == (floor + 3, floor + 5)
    with pytest.raises(ReplayTooOld):
        log.subscribe_after(floor + 6)  # not a seq of this log: from another life of the thread
    big = EventLog(SeqCounter(0), keep=is_lifecycle, max_events=100, max_bytes=200)
    for n in range(5):
        big.publish(Event(id="s", msg=AgentMessageDeltaEvent(delta=str(n) * 60, item_id="i")))
    kept, sub = big.subscribe_after(big.last_seq - 1)
    sub.close()
    assert len(kept) == 1
    with pytest.raises(ReplayTooOld):
        big.subscribe_after(big.last_seq - 3)
    assert isinstance(big, Broadcaster)


async def test_a_client_that_comes_back_gets_what_it_missed_in_order(make_config: Callable[..., Config]) -> None:
    async with served(make_config(thread_unload_delay_secs=60)) as (manager, server), client_of(server) as other:
        async with client_of(server) as first:
            thread = (await first.call("thread/start", {}))["thread"]
            await other.call("thread/resume", {"threadId": thread["id"]})
            await first.run_turn(thread["id"], "one")
            last_seen = sequenced(first)[-1][1]
        mark = len(other.notifications)
        missed_turn = await other.run_turn(thread["id"], "two")
        async with client_of(server) as back:
            answer = await back.call("thread/subscribe", {"threadId": thread["id"], "afterSeq": last_seen})
            assert answer["status"] == "replayed" and answer["replayed"] > 0
            replayed = await back.wait_for("turn/completed")
            assert replayed["params"]["turn"]["id"] == missed_turn["id"]
            assert sequenced(back) == [(m, s) for m, s in sequenced(other, mark) if s > last_seen]
            assert [n["method"] for n in back.notifications if "threadSeq" in n] == [
                n["method"] for n in other.notifications[mark:] if n.get("threadSeq", 0) > last_seen]
            items = [n["params"]["item"] for n in back.notifications if n["method"] == "item/completed"]
            assert [i["type"] for i in items] == ["userMessage", "agentMessage"] and items[1]["text"] == "echo: two"
            mark = len(back.notifications)
            await other.run_turn(thread["id"], "three")  # then it follows the thread live
            await back.wait_for("turn/completed", after=mark)


async def test_a_client_too_far_behind_is_told_to_reread_the_thread(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_module, "REPLAY_EVENTS", 4)
    async with served(make_config(thread_unload_delay_secs=60)) as (manager, server), client_of(server) as client:
        thread = (await client.call("thread/start", {}))["thread"]
        await client.run_turn(thread["id"], "a turn of more than four events")
        first_seen = sequenced(client)[0][1]
        async with client_of(server) as back:
            answer = await back.call("thread/subscribe", {"threadId": thread["id"], "afterSeq": first_seen})
            assert answer["status"] == "tooOld"
            assert first_seen < answer["oldestSeq"] <= answer["lastSeq"]
            assert sequenced(back) == []  # nothing replayed: it re-reads the thread instead
            read = await back.call("thread/read", {"threadId": thread["id"], "includeTurns": True})
            assert len(read["thread"]["turns"]) == 1
            await client.run_turn(thread["id"], "and it follows from now")  # subscribed all the same
            await back.wait_for("turn/completed")


async def test_a_seq_from_before_the_thread_was_reloaded_is_too_old(make_config: Callable[..., Config]) -> None:
    async with served(make_config(thread_unload_delay_secs=0)) as (manager, server), client_of(server) as client:
        thread = (await client.call("thread/start", {}))["thread"]
        await client.run_turn(thread["id"], "before")
        last_seen = sequenced(client)[-1][1]
        await client.call("thread/unsubscribe", {"threadId": thread["id"]})
        await client.wait_for("thread/closed")
        assert await client.call("thread/subscribe", {"threadId": thread["id"], "afterSeq": last_seen}) == {
            "status": "notLoaded"}
        await client.call("thread/resume", {"threadId": thread["id"]})
        answer = await client.call("thread/subscribe", {"threadId": thread["id"], "afterSeq": last_seen})
        assert answer["status"] == "tooOld" and answer["oldestSeq"] > last_seen


async def test_resubscribing_needs_the_experimental_api_and_a_whole_number(client: RpcClient) -> None:
    thread = (await client.call("thread/start", {}))["thread"]
    with pytest.raises(RpcFailure, match="thread/subscribe requires experimentalApi capability"):
        await client.call("thread/subscribe", {"threadId": thread["id"], "afterSeq": 1})
    with pytest.raises(RpcFailure, match="idempotencyKey requires experimentalApi capability"):
        await client.call("turn/start", {"threadId": thread["id"], "input": text("x"), "idempotencyKey": "k"})


# --- idempotent retries --------------------------------------------------------------


async def test_a_retried_turn_start_answers_the_first_turn_and_asks_the_model_once(
    make_config: Callable[..., Config], mock_model: MockModel
) -> None:
    async with served(make_config(thread_unload_delay_secs=60)) as (manager, server):
        async with client_of(server) as first:
            thread = (await first.call("thread/start", {}))["thread"]
            params = {"threadId": thread["id"], "input": text("only once"), "idempotencyKey": "retry-1"}
            started = await first.call("turn/start", params)
            await first.wait_turn(started["turn"]["id"])
        async with client_of(server) as back:  # the answer was lost with the connection: ask again
            await back.call("thread/subscribe", {"threadId": thread["id"]})
            again = await back.call("turn/start", params)
            assert again == started
            read = await back.call("thread/read", {"threadId": thread["id"], "includeTurns": True})
            assert [t["id"] for t in read["thread"]["turns"]] == [started["turn"]["id"]]
            assert mock_model.request_count == 1
            other = await back.call("turn/start", {**params, "idempotencyKey": "retry-2"})
            assert other["turn"]["id"] != started["turn"]["id"]  # a new key is a new request


async def test_retries_in_flight_wait_for_the_first_answer(
    make_config: Callable[..., Config], mock_model: MockModel
) -> None:
    async with served(make_config(thread_unload_delay_secs=60)) as (manager, server), \
            client_of(server) as one, client_of(server) as two:
        thread = (await one.call("thread/start", {}))["thread"]
        await two.call("thread/subscribe", {"threadId": thread["id"]})
        mock_model.script(Stall(seconds=0.5, then=Text(text="done")), thread_id=thread["id"])
        params = {"threadId": thread["id"], "input": text("at once"), "idempotencyKey": "together"}
        answers: list[dict[str, Any]] = []

        async def start(client: RpcClient) -> None:
            answers.append(await client.call("turn/start", params))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start, one)
            nursery.start_soon(start, two)
        assert answers[0] == answers[1]
        await one.wait_turn(answers[0]["turn"]["id"])
        assert mock_model.request_count == 1


async def test_an_idempotency_key_is_checked(make_config: Callable[..., Config]) -> None:
    async with served(make_config(thread_unload_delay_secs=60)) as (manager, server), client_of(server) as client:
        first = (await client.call("thread/start", {}))["thread"]
        second = (await client.call("thread/start", {}))["thread"]
        with pytest.raises(RpcFailure, match="thread not found") as failed:
            await client.call("turn/start", {"threadId": "00000000-0000-7000-8000-000000000001",
                                             "input": text("x"), "idempotencyKey": "k"})
        assert failed.value.code == -32600
        turn = await client.call("turn/start", {"threadId": first["id"], "input": text("x"), "idempotencyKey": "k"})
        await client.wait_turn(turn["turn"]["id"])  # the error was not remembered: the key was free
        with pytest.raises(RpcFailure, match="idempotencyKey .k. was used for turn/start on thread") as reused:
            await client.call("turn/start", {"threadId": second["id"], "input": text("x"), "idempotencyKey": "k"})
        assert reused.value.code == -32602
        with pytest.raises(RpcFailure, match="idempotencyKey is not accepted by thread/read") as refused:
            await client.call("thread/read", {"threadId": first["id"], "idempotencyKey": "r"})
        assert refused.value.code == -32602
        for bad in ("", 7, "x" * 300):
            with pytest.raises(RpcFailure, match="idempotencyKey must be"):
                await client.call("turn/start", {"threadId": first["id"], "input": text("x"), "idempotencyKey": bad})



async def test_answers_are_kept_for_a_while_and_only_so_many(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(idempotency, "ANSWER_KEYS", 2)
    answers = idempotency.Answers()
    runs: list[str] = []

    async def run(name: str) -> str:
        runs.append(name)
        return f"answer {len(runs)}"

    assert await answers.once("a", "turn/start", "t", lambda: run("a")) == "answer 1"
    assert await answers.once("a", "turn/start", "t", lambda: run("a")) == "answer 1"
    await trio.sleep(idempotency.ANSWER_TTL_S + 1)
    assert await answers.once("a", "turn/start", "t", lambda: run("a")) == "answer 2"  # forgotten: run again
    await answers.once("b", "turn/start", "t", lambda: run("b"))
    await answers.once("c", "turn/start", "t", lambda: run("c"))  # a third key: the oldest goes
    assert await answers.once("a", "turn/start", "t", lambda: run("a")) == "answer 5"
    assert runs == ["a", "a", "b", "c", "a"]


async def test_over_websocket_a_client_comes_back_to_a_thread_that_went_on_without_it(
    make_config: Callable[..., Config]
) -> None:
    """The thread runs a turn while no client is connected; the client that comes back gets that
    turn's notifications, and its retried turn/start answers the turn it started before."""
    async with open_runtime(make_config(thread_unload_delay_secs=60)) as manager, trio.open_nursery() as nursery:
        (bound,) = await nursery.start(lambda task_status: serve(manager, "ws://127.0.0.1:0", task_status=task_status))
        async with websocket_client(bound.url) as first:
            await first.initialize(experimental=True)
            thread = (await first.call("thread/start", {}))["thread"]
            retried = {"threadId": thread["id"], "input": text("one"), "idempotencyKey": "ws-1"}
            started = await first.call("turn/start", retried)
            await first.wait_turn(started["turn"]["id"])
            last_seen = sequenced(first)[-1][1]
        assert await manager.get_thread(thread["id"]).ask("two") == "echo: two"  # nobody is connected
        async with websocket_client(bound.url) as back:
            await back.initialize(experimental=True)
            answer = await back.call("thread/subscribe", {"threadId": thread["id"], "afterSeq": last_seen})
            assert answer["status"] == "replayed"
            completed = await back.wait_for("turn/completed")
            assert [i["text"] for i in completed["params"]["turn"]["items"] if i["type"] == "agentMessage"] == ["echo: two"]
            assert await back.call("turn/start", retried) == started
        nursery.cancel_scope.cancel()
