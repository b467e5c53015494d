"""A fault in one thread stays in that thread; ops carry the turn they assume."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from spindle.actors.runtime import ThreadManager, TurnError, turn
from spindle.actors.runtime.thread import ThreadActor
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.persistence.reader import read_rollout
from spindle.protocol.events import ErrorEvent, TaskCompleteEvent, TaskStartedEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import InterruptOp, OverrideTurnContextOp, UserInputOp
from spindle.protocol.settings import SettingsUpdate

from .helpers import collect_until


async def test_a_turn_that_raises_fails_alone(runtime: ThreadManager, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = await runtime.start_thread()
    other = await runtime.start_thread()
    real = turn.build_request

    def build(t: turn.Turn, host: Any) -> bytes:
        if host.thread_id == broken.thread_id:
            raise RuntimeError("request builder exploded")
        return real(t, host)

    monkeypatch.setattr(turn, "build_request", build)
    with pytest.raises(TurnError, match="internal error: RuntimeError: request builder exploded"):
        await broken.ask("go")
    assert await other.ask("still here?") == "echo: still here?"
    monkeypatch.setattr(turn, "build_request", real)
    assert await broken.ask("again") == "echo: again"  # the thread itself goes on too


async def test_an_actor_fault_ends_that_thread_only(runtime: ThreadManager, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = await runtime.start_thread()
    other = await runtime.start_thread()
    assert await broken.ask("before") == "echo: before"  # its rollout exists
    real = ThreadActor._apply_settings

    def apply_settings(actor: ThreadActor, sub_id: str, update: Any) -> bool:
        if actor.thread_id == broken.thread_id:
            raise RuntimeError("dispatch bug")
        return real(actor, sub_id, update)

    monkeypatch.setattr(ThreadActor, "_apply_settings", apply_settings)
    with broken.events() as events:
        outcome = await broken.submit_and_wait(OverrideTurnContextOp(settings=SettingsUpdate()))
        assert outcome.error is not None and "internal error: RuntimeError: dispatch bug" in outcome.error.message
        seen = await collect_until(events, lambda ev: isinstance(ev.msg, ErrorEvent) and ev.msg.codex_error_info == "internal_server_error")
    with trio.fail_after(5):
        await broken.wait_closed()
    assert broken.fault == "RuntimeError: dispatch bug"
    assert "dispatch bug" in seen[-1].msg.message  # type: ignore[union-attr]
    assert await other.ask("still here?") == "echo: still here?"
    read = read_rollout(broken.rollout_path)  # closed cleanly: whole lines, nothing torn
    assert read.torn is False and read.skipped == 0
    resumed = await runtime.resume_thread(broken.thread_id)
    assert resumed is not broken and await resumed.ask("after") == "echo: after"


async def test_a_steer_for_a_turn_that_is_not_running_is_refused(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    with thread.events() as events:
        outcome = await thread.submit_and_wait(UserInputOp(items=[TextInput(text="x")], expected_turn_id="gone"))
        assert outcome.error is not None and "expected active turn `gone` but found `None`" in outcome.error.message
        assert outcome.turn_id is None
        await thread.submit(UserInputOp(items=[TextInput(text="real")]))
        seen = await collect_until(events, TaskCompleteEvent)
    assert sum(isinstance(ev.msg, TaskStartedEvent) for ev in seen) == 1  # the refused steer started nothing


async def test_an_interrupt_for_another_turn_leaves_the_running_one(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()
    mock_model.script(Text(text="slow", gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="go")]))
        started = (await collect_until(events, TaskStartedEvent))[-1].msg
        outcome = await thread.submit_and_wait(InterruptOp(turn_id="some-other-turn"))
        assert outcome.error is not None and "no active turn to interrupt" in outcome.error.message
        gate.set()
        done = (await collect_until(events, TaskCompleteEvent))[-1].msg
    assert done.turn_id == started.turn_id and done.last_agent_message == "slow"  # type: ignore[union-attr]


async def test_a_resume_waits_for_the_closing_actor_to_release_the_rollout(
    runtime: ThreadManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last unsubscribe then resume at once: the resume must not start a second writer on the file."""
    from spindle.actors.appserver import AppServer
    from spindle.actors.testing.rpc_client import in_memory
    from spindle.persistence.rollout import ThreadRollout

    real_shutdown = ThreadRollout.shutdown

    async def slow_shutdown(rollout: ThreadRollout) -> None:
        await trio.sleep(0.2)  # the closing actor is still flushing when the resume arrives
        await real_shutdown(rollout)

    monkeypatch.setattr(ThreadRollout, "shutdown", slow_shutdown)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(runtime).run)
        async with in_memory(server) as first, in_memory(server) as second:
            await first.initialize()
            await second.initialize()
            thread = (await first.call("thread/start", {}))["thread"]
            await first.run_turn(thread["id"], "hello")
            old = runtime.get_thread(thread["id"])
            assert await first.call("thread/unsubscribe", {"threadId": thread["id"]}) == {"status": "unsubscribed"}
            await second.call("thread/resume", {"threadId": thread["id"]})
            assert old.is_closed, "the resume started a second actor while the first still held the rollout"
            assert (await second.run_turn(thread["id"], "again"))["status"] == "completed"
        server.stop()
    read = read_rollout(old.rollout_path)
    assert read.torn is False and read.skipped == 0
