"""Lossy fan-out: a slow subscriber lags, never blocks the producer or the others."""

from __future__ import annotations

import pytest
import trio

from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.fanout import Broadcaster, Lagged
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
    buffered, dropped = stalled.statistics()
    assert buffered == 5 and dropped > 400  # four events and the gap marker; the rest dropped
    assert len([stalled.receive_nowait() for _ in range(4)]) == 4
    with pytest.raises(Lagged):
        stalled.receive_nowait()
