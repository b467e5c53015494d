"""The user's own shell command (`thread/shellCommand`, the `run_user_shell_command` op): a turn
of its own when the thread is idle, an auxiliary of the running turn otherwise; a
`commandExecution` item with `source: userShell`; unsandboxed; its record in the history."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.auxiliary import Auxiliaries
from spindle.actors.runtime.user_shell import shell_record
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure
from spindle.persistence.history import is_user_turn_boundary
from spindle.protocol.events import (
    AgentMessageDeltaEvent,
    Event,
    ExecApprovalRequestEvent,
    ExecCommandOutputDeltaEvent,
    ItemCompletedEvent,
    ItemStartedEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TurnAbortedEvent,
)
from spindle.protocol.items import CommandExecutionItem, InputText, Message, TextInput
from spindle.protocol.ops import ExecApprovalOp, InterruptOp, RunUserShellCommandOp, UserInputOp

from .helpers import collect_until
from .test_execution import processes_with, sleeper

RECORD_OPEN = "<user_shell_command>"


def say(text: str) -> UserInputOp:
    return UserInputOp(items=[TextInput(text=text)])


def records(request_input: list[dict[str, Any]]) -> list[str]:
    """The `<user_shell_command>` user messages of a model request's input."""
    return [i["content"][0]["text"] for i in request_input
            if i["type"] == "message" and i["role"] == "user" and i["content"][0]["text"].startswith(RECORD_OPEN)]


def shell_item(ev: Event, kind: type[ItemStartedEvent] | type[ItemCompletedEvent] = ItemCompletedEvent) -> CommandExecutionItem | None:
    if isinstance(ev.msg, kind) and isinstance(ev.msg.item, CommandExecutionItem) and ev.msg.item.source == "userShell":
        return ev.msg.item
    return None


async def shell_command(client: RpcClient, tid: str, command: str, **params: Any) -> dict[str, Any]:
    """Run `command` over the wire; the `commandExecution` item it completed, and its turn."""
    after = len(client.notifications)
    assert await client.call("thread/shellCommand", {"threadId": tid, "command": command, **params}) == {}
    note = await client.wait_for("item/completed", lambda p: p["item"]["type"] == "commandExecution", after=after)
    return note["params"]  # type: ignore[no-any-return]


# --- a turn of its own ---------------------------------------------------------


async def test_a_shell_command_on_an_idle_thread_is_a_turn_of_its_own_without_the_model(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    script = "echo hi; echo err 1>&2; pwd"
    done = await shell_command(client, tid, script)
    started = (await client.wait_for("turn/started"))["params"]["turn"]
    assert done["turnId"] == started["id"]
    assert (await client.wait_turn(started["id"]))["status"] == "completed"
    begun = (await client.wait_for("item/started"))["params"]["item"]
    assert begun["type"] == "commandExecution" and begun["source"] == "userShell" and begun["status"] == "inProgress"
    assert begun["command"] == shlex.join([shutil.which("bash") or "bash", "-lc", script])
    assert begun["cwd"] == str(tmp_path)
    assert begun["commandActions"] == [{"type": "unknown", "command": script}]
    cwd = os.path.realpath(tmp_path)
    deltas = "".join(n["params"]["delta"] for n in client.notifications if n["method"] == "item/commandExecution/outputDelta")
    assert deltas == f"hi\nerr\n{cwd}\n"
    item = done["item"]
    assert (item["id"], item["status"], item["exitCode"], item["aggregatedOutput"]) == (begun["id"], "completed", 0, deltas)
    assert mock_model.requests == []  # no model request for it

    await client.run_turn(tid, "what did I run?")
    inputs = mock_model.requests[-1].json()["input"]
    [record] = records(inputs)
    assert record.startswith(f"{RECORD_OPEN}\n<command>\n{script}\n</command>\n<result>\nExit code: 0\nDuration: ")
    assert record.endswith(f" seconds\nOutput:\nhi\nerr\n{cwd}\n\n</result>\n</user_shell_command>")
    texts = [i["content"][0]["text"] for i in inputs if i["type"] == "message"]
    assert texts.index(record) == texts.index("what did I run?") - 1  # the command came before the question


async def test_a_command_that_does_not_exist_fails_with_the_shells_error(client: RpcClient) -> None:
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    item = (await shell_command(client, tid, "definitely-no-such-command-here --flag"))["item"]
    assert (item["status"], item["exitCode"]) == ("failed", 127)
    assert "definitely-no-such-command-here: command not found" in item["aggregatedOutput"]


async def test_a_shell_command_runs_unsandboxed_on_a_read_only_thread(
    client: RpcClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")  # not the thread's cwd, and the thread is read-only
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    item = (await shell_command(client, tid, f"echo written > {shlex.quote(str(outside / 'proof'))}"))["item"]
    assert (item["status"], item["exitCode"]) == ("completed", 0)
    assert (outside / "proof").read_text() == "written\n"


async def test_a_timeout_of_zero_times_out_at_once_and_the_model_is_told(client: RpcClient, mock_model: MockModel) -> None:
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    item = (await shell_command(client, tid, "echo never", timeoutMs=0))["item"]
    assert (item["status"], item["exitCode"]) == ("failed", 124)
    await client.run_turn(tid, "and?")
    [record] = records(mock_model.requests[-1].json()["input"])
    assert "Exit code: 124\n" in record and "Output:\ncommand timed out after " in record


async def test_a_command_within_its_timeout_runs_to_its_end(client: RpcClient) -> None:
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    item = (await shell_command(client, tid, "echo quick", timeoutMs=600_000))["item"]
    assert (item["status"], item["exitCode"], item["aggregatedOutput"]) == ("completed", 0, "quick\n")


async def test_the_output_kept_is_bounded_as_exec_commands_is(client: RpcClient, mock_model: MockModel) -> None:
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    item = (await shell_command(client, tid, "head -c 300000 /dev/zero | tr '\\0' a"))["item"]
    assert item["status"] == "completed"
    assert "bytes elided" in item["aggregatedOutput"] and len(item["aggregatedOutput"]) < 70_000
    await client.run_turn(tid, "and?")
    [record] = records(mock_model.requests[-1].json()["input"])
    assert "tokens truncated" in record and len(record) < 45_000


async def test_bad_shell_command_params_are_refused(client: RpcClient) -> None:
    tid = (await client.call("thread/start", {}))["thread"]["id"]
    with pytest.raises(RpcFailure) as empty:
        await client.call("thread/shellCommand", {"threadId": tid, "command": "   "})
    assert empty.value.error == {"code": -32600, "message": "command must not be empty"}
    with pytest.raises(RpcFailure) as negative:
        await client.call("thread/shellCommand", {"threadId": tid, "command": "ls", "timeoutMs": -1})
    assert negative.value.error["code"] == -32602
    assert negative.value.error["message"] == "Invalid params: timeoutMs must be non-negative, got -1"
    with pytest.raises(RpcFailure) as missing:
        await client.call("thread/shellCommand", {"threadId": tid})
    assert missing.value.error["code"] == -32602 and "command" in missing.value.error["message"]
    unknown = "01a1fc97-8a89-7f53-b8e1-6a189c77807a"
    with pytest.raises(RpcFailure) as not_loaded:
        await client.call("thread/shellCommand", {"threadId": unknown, "command": "ls"})
    assert not_loaded.value.error == {"code": -32600, "message": f"thread not found: {unknown}"}


# --- joining the running turn ----------------------------------------------------


async def test_a_shell_command_joins_a_turn_waiting_on_an_approval(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(approval_policy="untrusted") as rt:
        thread = await rt.start_thread()
        ask = Call(name="exec_command", arguments={"cmd": "touch made"}, call_id="call_1")
        mock_model.script(ask, Text(text="done"), thread_id=thread.thread_id)
        with thread.events() as events:
            await thread.submit(say("make it"))
            seen = await collect_until(events, ExecApprovalRequestEvent)
            turn_id = thread.active_turn_id
            await thread.submit(RunUserShellCommandOp(command="echo joined"))
            seen += await collect_until(events, lambda ev: shell_item(ev) is not None)
            assert thread.waiting_on_approval and thread.active_turn_id == turn_id  # the turn still waits
            await thread.submit(ExecApprovalOp(id="call_1", decision="denied"))
            seen += await collect_until(events, TaskCompleteEvent)
    assert [ev.msg.turn_id for ev in seen if isinstance(ev.msg, TaskStartedEvent)] == [turn_id]
    joined = [ev.msg for ev in seen if shell_item(ev, ItemStartedEvent) or shell_item(ev)]
    assert [type(m).__name__ for m in joined] == ["ItemStartedEvent", "ItemCompletedEvent"]
    assert all(isinstance(m, ItemStartedEvent | ItemCompletedEvent) and m.turn_id == turn_id for m in joined)
    [item] = [item for ev in seen if (item := shell_item(ev)) is not None]
    assert (item.status, item.exit_code, item.aggregated_output) == ("completed", 0, "joined\n")
    last = mock_model.requests[-1].json()["input"]  # the same turn samples again after the declined call
    assert [i["type"] for i in last[-2:]] == ["function_call_output", "message"]
    assert records(last) == [last[-1]["content"][0]["text"]]
    assert "<command>\necho joined\n</command>" in last[-1]["content"][0]["text"]


async def test_a_shell_command_that_joins_a_streaming_turn_is_seen_by_its_next_sample(
    runtime: ThreadManager, mock_model: MockModel
) -> None:
    thread = await runtime.start_thread()
    gate = trio.Event()
    mock_model.script(Text(text="first part", gate=gate), Text(text="second"), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(say("go"))
        seen = await collect_until(events, AgentMessageDeltaEvent)  # the stream is held after its first delta
        await thread.submit(RunUserShellCommandOp(command="echo aside"))
        seen += await collect_until(events, lambda ev: shell_item(ev) is not None)
        gate.set()
        seen += await collect_until(events, TaskCompleteEvent)
    assert sum(isinstance(ev.msg, TaskStartedEvent) for ev in seen) == 1
    last = seen[-1].msg
    assert isinstance(last, TaskCompleteEvent) and last.last_agent_message == "second"
    assert len(mock_model.requests) == 2  # sampled again, within the turn, with the command's record
    assert records(mock_model.requests[0].json()["input"]) == []
    second = mock_model.requests[1].json()["input"]
    assert [i.get("role") for i in second[-2:]] == ["assistant", "user"]
    assert second[-1]["content"][0]["text"].startswith(f"{RECORD_OPEN}\n<command>\necho aside\n</command>")


async def test_an_interrupt_ends_the_shell_command_that_joined_the_turn(
    runtime: ThreadManager, mock_model: MockModel
) -> None:
    thread = await runtime.start_thread()
    seconds, script = sleeper()
    mock_model.script(Text(text="held", gate=trio.Event()), thread_id=thread.thread_id)  # never released
    with thread.events() as events:
        await thread.submit(say("go"))
        await collect_until(events, AgentMessageDeltaEvent)
        await thread.submit(RunUserShellCommandOp(command=script))
        await collect_until(events, lambda ev: isinstance(ev.msg, ExecCommandOutputDeltaEvent) and "started" in ev.msg.delta)
        await thread.submit(InterruptOp())
        seen = await collect_until(events, TurnAbortedEvent)
    [item] = [item for ev in seen if (item := shell_item(ev)) is not None]
    assert item.status == "failed" and item.aggregated_output == "started\n"
    assert processes_with(f"sleep {seconds}") == []
    marker, record = thread.history[-2:]
    assert isinstance(marker, Message) and marker.text().startswith("<turn_aborted>")
    assert isinstance(record, Message) and record.role == "user"
    assert "Exit code: -1\n" in record.text() and "Output:\ncommand aborted by user" in record.text()


async def test_input_sent_during_a_shell_commands_own_turn_is_answered_in_it(
    runtime: ThreadManager, mock_model: MockModel, tmp_path: Path
) -> None:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    thread = await runtime.start_thread()
    with thread.events() as events:
        await thread.submit(RunUserShellCommandOp(command=f"cat {shlex.quote(str(fifo))}"))
        seen = await collect_until(events, lambda ev: shell_item(ev, ItemStartedEvent) is not None)
        await thread.submit(say("what now?"))  # steered into the running shell turn
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(fifo.write_text, "released\n")
        seen += await collect_until(events, TaskCompleteEvent)
    assert sum(isinstance(ev.msg, TaskStartedEvent) for ev in seen) == 1
    last = seen[-1].msg
    assert isinstance(last, TaskCompleteEvent) and last.last_agent_message == "echo: what now?"
    [request] = mock_model.requests
    texts = [i["content"][0]["text"] for i in request.json()["input"] if i["type"] == "message"]
    assert texts[-2].startswith(f"{RECORD_OPEN}\n<command>\ncat ") and "Output:\nreleased\n" in texts[-2]
    assert texts[-1] == "what now?"


async def test_a_shell_command_on_the_op_is_trimmed_and_an_empty_one_refused(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    outcome = await thread.submit_and_wait(RunUserShellCommandOp(command="  \n"))
    assert outcome.error is not None and outcome.error.message == "command must not be empty"
    outcome = await thread.submit_and_wait(RunUserShellCommandOp(command="ls", timeout_ms=-5))
    assert outcome.error is not None and outcome.error.message == "timeout_ms must be non-negative, got -5"
    assert thread.active_turn_id is None
    with thread.events() as events:
        await thread.submit(RunUserShellCommandOp(command="  echo trimmed \n"))
        seen = await collect_until(events, TaskCompleteEvent)
    [item] = [item for ev in seen if (item := shell_item(ev)) is not None]
    assert item.actions == ["echo trimmed"] and item.aggregated_output == "trimmed\n"


# --- the parts ---------------------------------------------------------------------


def test_the_record_is_context_not_a_user_turn() -> None:
    record = shell_record("ls", exit_code=0, duration_s=1.0, output="a\n")
    assert record == Message(role="user", content=[InputText(text=(
        "<user_shell_command>\n<command>\nls\n</command>\n<result>\nExit code: 0\nDuration: 1.0000 seconds\n"
        "Output:\na\n\n</result>\n</user_shell_command>"))])
    assert not is_user_turn_boundary(record)  # a rollback or a fork counts the user's own messages only


async def test_cancelling_a_turns_auxiliaries_ends_them_and_any_started_later(nursery: trio.Nursery) -> None:
    aux = Auxiliaries()
    ended: list[str] = []

    async def job(name: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.append(name)

    aux.start(nursery, lambda: job("running"))
    await trio.testing.wait_all_tasks_blocked()
    await aux.cancel()  # waits until it has ended
    assert ended == ["running"] and aux.running == 0
    aux.start(nursery, lambda: job("late"))  # joined an interrupted turn: cancelled at once
    await trio.testing.wait_all_tasks_blocked()
    assert ended == ["running", "late"] and aux.running == 0


async def test_a_failing_auxiliary_does_not_fail_the_thread(nursery: trio.Nursery) -> None:
    aux = Auxiliaries()

    async def broken() -> None:
        raise RuntimeError("boom")

    aux.start(nursery, broken)
    await trio.testing.wait_all_tasks_blocked()
    assert aux.running == 0
    await aux.cancel()  # nothing left to wait for
