"""Lossy fan-out: a slow subscriber lags, never blocks the producer or the others."""

from __future__ import annotations

import pytest
import trio

from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.fanout import Broadcaster, Lagged, Subscription
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.protocol.events import TaskCompleteEvent

from .helpers import collect_until


def test_slow_subscriber_gets_lagged_after_its_buffer() -> None:
    source: Broadcaster[int] = Broadcaster(capacity=3)
    slow, fast = source.subscribe(), source.subscribe(capacity=100)
    for n in range(10):
        source.publish(n)  # never blocks, whoever is reading
    assert [slow.receive_nowait() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(Lagged) as lag:
        slow.receive_nowait()
    assert lag.value.missed == 7
    assert [fast.receive_nowait() for _ in range(10)] == list(range(10))
    source.publish(10)  # after the gap, delivery resumes
    assert slow.receive_nowait() == 10 and fast.receive_nowait() == 10


async def test_closing_ends_iteration_after_buffered_items() -> None:
    source: Broadcaster[str] = Broadcaster()
    sub = source.subscribe()
    source.publish("a")
    source.close()
    assert [x async for x in sub] == ["a"]
    late = source.subscribe()
    assert [x async for x in late] == []


async def test_receive_waits_for_the_next_item() -> None:
    source: Broadcaster[int] = Broadcaster()
    sub = source.subscribe()
    got: list[int] = []

    async def reader() -> None:
        got.append(await sub.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        source.publish(7)
    assert got == [7]


def test_detached_subscription_gets_nothing_more() -> None:
    source: Broadcaster[int] = Broadcaster()
    sub = source.subscribe()
    sub.close()
    source.publish(1)
    assert source.subscriber_count == 0
    with pytest.raises(trio.EndOfChannel):
        sub.receive_nowait()


async def test_a_stalled_subscriber_does_not_slow_a_turn(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    mock_model.script(Text(text="x" * 400, chunks=400), thread_id=thread.thread_id)
    stalled = thread.events(capacity=4)  # never read during the turn
    with thread.events() as reader:
        # ask() reads through its own subscription; the turn finishes although `stalled` is full
        assert await thread.ask("stream a lot") == "x" * 400
        seen = await collect_until(reader, TaskCompleteEvent)
    assert sum(1 for ev in seen if type(ev.msg).__name__ == "AgentMessageDeltaEvent") == 400
    received: list[str] = []
    lags: list[Lagged] = []
    while True:
        try:
            received.append(type(stalled.receive_nowait().msg).__name__)
        except Lagged as lag:
            lags.append(lag)
        except trio.WouldBlock:
            break
    # deltas were dropped; every lifecycle event of the turn arrived, in order
    assert received[0] == "TaskStartedEvent" and received[-1] == "TaskCompleteEvent"
    assert received.count("ItemCompletedEvent") == 2 and "AgentMessageDeltaEvent" not in received[4:]
    assert sum(lag.missed for lag in lags) == stalled.statistics()[1] > 390
    assert all(lag.lifecycle_missed == 0 for lag in lags)


def test_lifecycle_items_survive_a_lag_until_the_headroom_runs_out() -> None:
    source: Broadcaster[int] = Broadcaster(capacity=2, keep=lambda n: n % 10 == 0)
    sub = source.subscribe()
    for n in range(100):  # 10 lifecycle items (0, 10, ..., 90) among 90 droppable ones
        source.publish(n)
    got, lags = drain(sub)
    assert got == [0, 1, 10, 20, 30]  # capacity 2, then lifecycle items (and gap marks) up to 4 x 2
    assert sum(lag.missed for lag in lags) == 95 and sum(lag.lifecycle_missed for lag in lags) == 6


def drain(sub: Subscription[int]) -> tuple[list[int], list[Lagged]]:
    got: list[int] = []
    lags: list[Lagged] = []
    while True:
        try:
            got.append(sub.receive_nowait())
        except Lagged as lag:
            lags.append(lag)
        except trio.WouldBlock:
            return got, lags


def test_every_subscriber_tells_an_event_by_the_time_the_thread_published_it() -> None:
    """Times on the wire are the event's (`Event.at_ms`), not each connection's clock when it got
    round to it: two subscribers (or a node relaying for one) send identical notifications."""
    from spindle.actors.appserver.notify import EventTranslator
    from spindle.protocol.events import Event, ItemCompletedEvent, TaskStartedEvent
    from spindle.protocol.ids import new_id
    from spindle.protocol.items import AgentMessageContent, AgentMessageItem

    tid, turn = new_id(), new_id()
    item = AgentMessageItem(id="msg", content=[AgentMessageContent(text="hi")])
    events = [Event(id="s", msg=TaskStartedEvent(turn_id=turn), seq=1, at_ms=1_000_000),
              Event(id="s", msg=ItemCompletedEvent(thread_id=tid, turn_id=turn, item=item), seq=2, at_ms=1_000_250),
              Event(id="s", msg=TaskCompleteEvent(turn_id=turn), seq=3, at_ms=1_000_400)]
    first, second = EventTranslator(tid), EventTranslator(tid)
    said = [first.translate(event) for event in events]
    assert said == [second.translate(event) for event in events]
    completed = [params for out in said for method, params in out if method == "item/completed"]
    assert [notice.completed_at_ms for notice in completed] == [1_000_250]
    [turn_done] = [params.turn for out in said for method, params in out if method == "turn/completed"]
    assert (turn_done.started_at, turn_done.completed_at, turn_done.duration_ms) == (1000, 1000, 400)
