"""The thread actor: op ordering, interrupts, steering, tools, shutdown."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio

from spindle.actors.runtime import ConfigError, ThreadManager, TurnAbortedError, open_runtime
from spindle.actors.runtime.exec_command import REJECTED_BY_USER
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.protocol.config import Config
from spindle.protocol.events import (
    AgentMessageDeltaEvent,
    ApprovalRequestEvent,
    ErrorEvent,
    ExecApprovalRequestEvent,
    ExecCommandOutputDeltaEvent,
    ItemCompletedEvent,
    SessionConfiguredEvent,
    ShutdownCompleteEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TurnAbortedEvent,
)
from spindle.protocol.items import CommandExecutionItem, FunctionCallOutput, TextInput
from spindle.protocol.ops import (
    InterruptOp,
    OverrideTurnContextOp,
    ShutdownOp,
    UserInputOp,
)
from spindle.protocol.settings import ReviewDecision, SettingsUpdate

from .helpers import collect_until, kinds
from .sandbox_helpers import needs_bwrap
from .test_execution import processes_with, sleeper


def say(text: str) -> UserInputOp:
    return UserInputOp(items=[TextInput(text=text)])


async def test_first_event_is_session_configured(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    assert isinstance(thread.session_configured, SessionConfiguredEvent)
    assert thread.session_configured.session_id == thread.thread_id
    assert thread.session_configured.model == "mock-model"


async def test_ask_returns_final_message_and_request_shape(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    assert await thread.ask("hello") == "echo: hello"
    body = mock_model.requests[-1].json()
    assert body["stream"] is True and body["store"] is False
    assert body["prompt_cache_key"] == thread.thread_id
    assert body["model"] == "mock-model"
    assert body["instructions"]
    assert [t["name"] for t in body["tools"]] == ["exec_command", "request_user_input"]  # as Codex offers them
    assert body["input"][-1] == {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    # the next turn replays the whole history, the assistant reply included
    await thread.ask("again")
    first, *rest = mock_model.requests[-1].json()["input"]
    assert first["content"][0]["text"].startswith("<environment_context>")
    assert [item["role"] for item in rest] == ["user", "assistant", "user"]


async def test_ops_are_handled_in_submission_order(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    with thread.events() as events:
        first = await thread.submit(OverrideTurnContextOp(settings=SettingsUpdate(model="model-a")))
        second = await thread.submit(say("one"))
        seen = await collect_until(events, TaskCompleteEvent)
        third = await thread.submit(OverrideTurnContextOp(settings=SettingsUpdate(model="model-b")))
        fourth = await thread.submit(say("two"))
        seen += await collect_until(events, TaskCompleteEvent)
    assert [int(x) for x in (first, second, third, fourth)] == [1, 2, 3, 4]
    assert [r.json()["model"] for r in mock_model.requests] == ["model-a", "model-b"]
    assert {ev.id for ev in seen if isinstance(ev.msg, TaskCompleteEvent)} == {second, fourth}


async def test_interrupt_mid_stream_aborts_turn(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()  # the mock holds the stream open after its first delta until this is set
    mock_model.script(Text(text="a long answer", chunks=5, gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(say("talk"))
        await collect_until(events, AgentMessageDeltaEvent)
        await thread.submit(InterruptOp())
        seen = await collect_until(events, TurnAbortedEvent)
    assert not gate.is_set(), "the mock was still streaming when the turn ended"
    aborted = seen[-1].msg
    assert isinstance(aborted, TurnAbortedEvent) and aborted.reason == "interrupted"
    assert "task_complete" not in kinds(seen)
    gate.set()
    # the thread keeps working, and the model is told the last turn was cut short
    assert await thread.ask("next") == "echo: next"
    texts = [p["text"] for i in mock_model.requests[-1].json()["input"] for p in i.get("content", [])]
    assert any("<turn_aborted>" in t for t in texts)


async def test_ask_raises_when_its_turn_is_interrupted(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()
    mock_model.script(Text(text="slow", gate=gate), thread_id=thread.thread_id)
    outcome: list[BaseException] = []

    async def asker() -> None:
        try:
            await thread.ask("hi")
        except TurnAbortedError as exc:
            outcome.append(exc)

    with thread.events() as events:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker)
            await collect_until(events, AgentMessageDeltaEvent)
            await thread.submit(InterruptOp())
    gate.set()
    assert len(outcome) == 1


async def test_user_input_during_a_turn_is_steered_into_it(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()
    mock_model.script(Text(text="first", gate=gate), Text(text="second"), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(say("start"))
        await collect_until(events, AgentMessageDeltaEvent)
        await thread.submit(say("also this"))
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        seen = await collect_until(events, TaskCompleteEvent)
    assert kinds(seen).count("task_started") == 0  # no second turn was started
    done = seen[-1].msg
    assert isinstance(done, TaskCompleteEvent) and done.last_agent_message == "second"
    last_input = mock_model.requests[-1].json()["input"]
    assert [i.get("role") for i in last_input[1:]] == ["user", "assistant", "user"]
    assert last_input[-1]["content"][0]["text"] == "also this"


async def test_exec_command_round_trip(runtime: ThreadManager, mock_model: MockModel, tmp_path: Path) -> None:
    thread = await runtime.start_thread(SettingsUpdate(cwd=str(tmp_path)))
    mock_model.script(
        Call(name="exec_command", arguments={"cmd": "pwd; echo out; exit 3"}, call_id="call_1"),
        Text(text="ran it"),
        thread_id=thread.thread_id,
    )
    with thread.events() as events:
        await thread.submit(say("run something"))
        seen = await collect_until(events, TaskCompleteEvent)
    commands = [ev.msg.item for ev in seen if isinstance(ev.msg, ItemCompletedEvent) and isinstance(ev.msg.item, CommandExecutionItem)]
    assert len(commands) == 1
    assert commands[0].exit_code == 3 and commands[0].aggregated_output == f"{tmp_path}\nout\n"
    assert commands[0].command.endswith("bash -lc 'pwd; echo out; exit 3'") and commands[0].status == "failed"
    deltas = "".join(ev.msg.delta for ev in seen if isinstance(ev.msg, ExecCommandOutputDeltaEvent))
    assert deltas == f"{tmp_path}\nout\n"
    second = mock_model.requests[1].json()["input"]
    call, output = second[-2], second[-1]
    assert call["type"] == "function_call" and call["call_id"] == "call_1"
    assert output["type"] == "function_call_output" and output["call_id"] == "call_1"
    assert "\nProcess exited with code 3\n" in output["output"] and output["output"].endswith("Output:\n" + f"{tmp_path}\nout\n")


@needs_bwrap
async def test_exec_command_under_read_only_runs_in_the_sandbox(runtime: ThreadManager, mock_model: MockModel, tmp_path: Path) -> None:
    marker = tmp_path / "created"
    thread = await runtime.start_thread(SettingsUpdate(sandbox_mode="read-only", approval_policy="on-request"))
    mock_model.script(
        Call(name="exec_command", arguments={"cmd": f"touch {marker}"}),
        Text(text="ok"),
        thread_id=thread.thread_id,
    )
    assert await thread.ask("make a file") == "ok"
    assert not marker.exists()
    output = mock_model.requests[-1].json()["input"][-1]
    assert output["type"] == "function_call_output"
    assert "Process exited with code 1" in output["output"] and "Read-only file system" in output["output"]


@needs_bwrap
async def test_an_interrupt_kills_a_running_command_and_ends_its_item(
    runtime: ThreadManager, mock_model: MockModel, tmp_path: Path
) -> None:
    seconds, script = sleeper()
    thread = await runtime.start_thread(SettingsUpdate(cwd=str(tmp_path), sandbox_mode="workspace-write"))
    mock_model.script(Call(name="exec_command", arguments={"cmd": script, "login": False}, call_id="call_long"),
                      thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(say("run forever"))
        await collect_until(events, ExecCommandOutputDeltaEvent)
        await thread.submit(InterruptOp())
        seen = await collect_until(events, TurnAbortedEvent)
    (item,) = [ev.msg.item for ev in seen if isinstance(ev.msg, ItemCompletedEvent)]
    assert isinstance(item, CommandExecutionItem) and item.id == "call_long"
    assert item.status == "failed" and item.aggregated_output == "started\n"
    with trio.fail_after(10):  # the sandbox's pid namespace is torn down by the kernel after bwrap dies
        while processes_with(seconds):  # noqa: ASYNC110 - polls /proc: no event to wait on
            await trio.sleep(0.05)


async def test_under_untrusted_ask_declines_a_command_unless_its_approver_accepts(
    runtime: ThreadManager, mock_model: MockModel, tmp_path: Path
) -> None:
    marker = tmp_path / "created"
    thread = await runtime.start_thread(SettingsUpdate(approval_policy="untrusted"))
    make = Call(name="exec_command", arguments={"cmd": f"touch {marker}"})
    mock_model.script(make, Text(text="ok"), thread_id=thread.thread_id)
    assert await thread.ask("make a file") == "ok"
    assert not marker.exists()
    assert mock_model.requests[-1].json()["input"][-1]["output"] == REJECTED_BY_USER
    asked: list[ApprovalRequestEvent] = []

    async def approve(request: ApprovalRequestEvent) -> ReviewDecision:
        asked.append(request)
        return "approved"

    mock_model.script(make, Text(text="made"), thread_id=thread.thread_id)
    assert await thread.ask("make it now", approve=approve) == "made"
    assert marker.exists() and isinstance(asked[0], ExecApprovalRequestEvent)


async def test_bad_tool_arguments_reach_the_model_as_output(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    mock_model.script(
        Call(name="exec_command", arguments="{not json"),
        Call(name="nope", arguments={}),
        Text(text="fine"),
        thread_id=thread.thread_id,
    )
    assert await thread.ask("x") == "fine"
    outputs = [msgspec.convert(i, FunctionCallOutput) for r in mock_model.requests[1:] for i in r.json()["input"][-1:]]
    assert outputs[0].output.startswith("invalid arguments for exec_command")
    assert outputs[1].output.startswith("unknown tool 'nope'")


async def test_bad_override_is_an_error_and_changes_nothing(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    before = thread.settings
    with thread.events() as events:
        await thread.submit(OverrideTurnContextOp(settings=SettingsUpdate(cwd="/no/such/dir", model="other")))
        seen = await collect_until(events, ErrorEvent)
    assert "is not a directory" in seen[-1].msg.message  # type: ignore[union-attr]
    assert thread.settings == before


async def test_shutdown_aborts_active_turn_then_completes(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()
    mock_model.script(Text(text="never finished", gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(say("go"))
        await collect_until(events, AgentMessageDeltaEvent)
        await thread.submit(ShutdownOp())
        seen = await collect_until(events, ShutdownCompleteEvent)
        rest = [ev async for ev in events]
    gate.set()
    assert kinds(seen)[-2:] == ["turn_aborted", "shutdown_complete"]
    assert rest == []  # the subscription ends after shutdown_complete
    assert thread.is_closed


async def test_closing_the_channel_tears_down_like_shutdown(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()
    mock_model.script(Text(text="x", gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(say("go"))
        await collect_until(events, AgentMessageDeltaEvent)
        thread.close()
        seen = [ev async for ev in events]
    gate.set()
    assert kinds(seen)[-1] == "turn_aborted"
    assert thread.is_closed


async def test_handle_interrupt_names_the_turn_it_aborted(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    assert await thread.interrupt() is None  # idle: nothing to abort
    gate = trio.Event()
    mock_model.script(Text(text="slow", gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="go")]))
        started = (await collect_until(events, TaskStartedEvent))[-1].msg
        aborted_id = await thread.interrupt()
        aborted = (await collect_until(events, TurnAbortedEvent))[-1].msg
    assert aborted_id == started.turn_id == aborted.turn_id  # type: ignore[union-attr]
    gate.set()


async def test_history_is_a_read_only_live_view(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    view = thread.history
    assert len(view) == 0
    await thread.ask("hi")
    assert len(view) == 3 and view == list(view)  # it follows the thread: context, question, answer
    assert not hasattr(view, "append") and not hasattr(view, "__setitem__")
    with pytest.raises(TypeError):
        view[0] = view[1]  # type: ignore[index]


async def test_an_unknown_default_provider_is_refused_at_start(tmp_path: Path) -> None:
    """A Config built in code is not validated like a file: start_thread checks its provider."""
    async with open_runtime(Config(model_provider="nowhere", codex_home=str(tmp_path))) as rt:
        with pytest.raises(ConfigError, match="unknown model provider 'nowhere'"):
            await rt.start_thread()
