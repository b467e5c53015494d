"""Client requests outlive the process: a thread resumed after its app-server was killed mid-turn
asks again what was left unanswered, or closes the turn it cannot take up."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from spindle.actors.runtime.tools import ToolRegistry
from spindle.actors.testing.mock_model import Call, MockModel, MockRequest, Reply, Text
from spindle.actors.testing.rpc_client import RpcClient, subprocess_server, write_config
from spindle.persistence.history import unfinished_turn
from spindle.protocol.events import (
    ApprovalResolvedEvent,
    ExecApprovalRequestEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TurnAbortedEvent,
)
from spindle.protocol.items import FunctionCall, FunctionCallOutput, TextInput
from spindle.protocol.ops import InterruptOp, UserInputOp

from .helpers import collect_until, escalating_model
from .test_approvals import AskingTool

COMMAND = "item/commandExecution/requestApproval"


async def kill_mid_turn(
    tmp_path: Path, mock: MockModel, model: Callable[[MockRequest], Reply],
    until: Callable[[RpcClient], Awaitable[dict[str, Any]]], **thread: Any,
) -> tuple[Path, Path, str, dict[str, Any]]:
    """Start a thread (`thread` params) in `tmp_path/work` on a `spindle app-server` with its home
    in `tmp_path/home`, start a turn of `model`, wait `until` the client sees what it waits for,
    and kill the server (SIGKILL: no chance to close the turn). Home, work, thread id, and what
    `until` saw."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    write_config(home, mock)
    mock.default = model
    async with subprocess_server(home, work) as (client, process):
        await client.initialize()
        tid: str = (await client.call("thread/start", {"cwd": str(work), **thread}))["thread"]["id"]
        await client.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]})
        seen = await until(client)
        process.kill()
        await process.wait()
    return home, work, tid, seen


def asked(client: RpcClient) -> Awaitable[dict[str, Any]]:
    return client.wait_request(COMMAND)


async def test_a_request_pending_when_the_server_is_killed_is_asked_again_on_resume(
    tmp_path: Path, mock_model: MockModel
) -> None:
    home, work, tid, first = await kill_mid_turn(tmp_path, mock_model, escalating_model, asked,
                                                 approvalPolicy="on-request")
    assert not (work / "made.txt").exists()
    async with subprocess_server(home, work) as (client, process):
        await client.initialize()
        resumed = await client.call("thread/resume", {"threadId": tid})
        assert resumed["thread"]["status"]["type"] == "active"  # the turn goes on
        assert resumed["thread"]["turns"][-1]["status"] == "inProgress"
        again = await client.wait_request(COMMAND)
        await client.wait_for("thread/status/changed", lambda p: p["status"].get("activeFlags") == ["waitingOnApproval"])
        for name in ("threadId", "turnId", "itemId", "command", "cwd", "reason"):
            assert again["params"][name] == first["params"][name], name
        await client.answer(again["id"], {"decision": "accept"})
        completed = await client.wait_for("turn/completed")
        assert completed["params"]["turn"]["id"] == first["params"]["turnId"]
        assert completed["params"]["turn"]["status"] == "completed"
        resolved = await client.wait_for("serverRequest/resolved")
        assert resolved["params"] == {"threadId": tid, "requestId": again["id"]}
    assert (work / "made.txt").read_text() == "made\n"
    last = mock_model.requests[-1].json()["input"]
    outputs = [item for item in last if item["type"] == "function_call_output"]
    assert [o["call_id"] for o in outputs] == [first["params"]["itemId"]]
    assert outputs[0]["output"].splitlines()[-1] == "made"


async def test_a_pending_request_is_not_taken_up_under_other_settings(tmp_path: Path, mock_model: MockModel) -> None:
    home, work, tid, _ = await kill_mid_turn(tmp_path, mock_model, escalating_model, asked, approvalPolicy="on-request")
    other = tmp_path / "other"
    other.mkdir()
    async with subprocess_server(home, work) as (client, process):
        await client.initialize()
        resumed = await client.call("thread/resume", {"threadId": tid, "cwd": str(other)})
        assert resumed["thread"]["status"] == {"type": "idle"}  # closed: its cwd would have moved under it
        assert resumed["thread"]["turns"][-1]["status"] == "interrupted"
        with trio.move_on_after(0.3):
            await client.wait_request(COMMAND)
            raise AssertionError("asked again under other settings")
    assert not (work / "made.txt").exists() and not (other / "made.txt").exists()


def sleeping_model(request: MockRequest) -> Reply:
    """Runs a long command in the first turn; answers with text once it has an output."""
    inputs = request.json()["input"]
    if inputs[-1]["type"] == "message" and inputs[-1]["content"][0]["text"] == "go":
        return Call(name="exec_command", arguments={"cmd": "sleep 60"})
    return Text(text="next")


async def test_a_turn_killed_while_a_command_ran_is_closed_on_resume_and_not_run_again(
    tmp_path: Path, mock_model: MockModel
) -> None:
    def running(client: RpcClient) -> Awaitable[dict[str, Any]]:
        return client.wait_for("item/started", lambda p: p["item"]["type"] == "commandExecution")

    home, work, tid, started = await kill_mid_turn(tmp_path, mock_model, sleeping_model, running,
                                                   sandbox="danger-full-access")
    call_id = started["params"]["item"]["id"]
    async with subprocess_server(home, work) as (client, process):
        await client.initialize()
        resumed = await client.call("thread/resume", {"threadId": tid})
        assert resumed["thread"]["status"] == {"type": "idle"}
        assert resumed["thread"]["turns"][-1]["status"] == "interrupted"
        turn = await client.run_turn(tid, "again")
        assert turn["status"] == "completed"
        with trio.move_on_after(0.3):  # the killed command is never started again
            await client.wait_for("item/started", lambda p: p["item"]["type"] == "commandExecution")
            raise AssertionError("the command ran again")
    sent = mock_model.requests[-1].json()["input"]
    outputs = [item for item in sent if item["type"] == "function_call_output"]
    assert [(o["call_id"], o["output"]) for o in outputs] == [(call_id, "aborted")]  # as an interrupt leaves it
    texts = [c.get("text", "") for item in sent if item["type"] == "message" for c in item["content"]]
    assert any(text.startswith("<turn_aborted>") for text in texts)


def test_an_unfinished_turn_lists_the_requests_it_still_waits_on() -> None:
    def ask(call_id: str, *, retry: bool = False) -> ExecApprovalRequestEvent:
        return ExecApprovalRequestEvent(call_id=call_id, turn_id="t1", command=["touch", call_id], cwd="/", retry=retry)

    def call(call_id: str) -> FunctionCall:
        return FunctionCall(call_id=call_id, name="exec_command", arguments="{}")

    done = [TaskStartedEvent(turn_id="t0"), call("a"), ask("a"), ApprovalResolvedEvent(call_id="a", decision="approved"),
            FunctionCallOutput(call_id="a", output="ok"), TaskCompleteEvent(turn_id="t0")]
    assert unfinished_turn(done) is None
    items = [*done, TaskStartedEvent(turn_id="t1"), *map(call, "bcdefg"),
             ask("b"), ApprovalResolvedEvent(call_id="b", decision="approved"),  # answered: it ran
             ask("c"),  # waits
             ask("d"), ApprovalResolvedEvent(call_id="d", decision=None),  # cleared
             ask("e"), FunctionCallOutput(call_id="e", output="refused"),  # asked again after a restart, and refused
             ask("f", retry=True),  # the command ran once already
             ask("g")]
    unfinished = unfinished_turn(items)
    assert unfinished is not None and unfinished.turn_id == "t1"
    assert [r.call_id for r in unfinished.pending] == ["c", "g"]


async def test_a_request_is_on_disk_before_any_client_hears_it(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="ask", arguments="f"), Text(text="done"), thread_id=thread.thread_id)
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="go")]))
            request = (await collect_until(events, ExecApprovalRequestEvent))[-1].msg
            assert isinstance(request, ExecApprovalRequestEvent)
            on_disk = [json.loads(line) for line in Path(thread.rollout_path).read_text().splitlines()]
            assert {"type": "exec_approval_request", "call_id": request.call_id}.items() <= on_disk[-1]["payload"].items()
            await thread.submit(InterruptOp())
            await collect_until(events, TurnAbortedEvent)


async def test_a_patch_request_is_kept_without_the_file_contents(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    secret = tmp_path / ".env"
    secret.write_text("API_KEY=do-not-store-me\n" * 1000)
    async def accept(request: Any) -> Any:
        return "approved"

    async with make_runtime(approval_policy="untrusted", sandbox_mode="workspace-write") as rt:
        thread = await rt.start_thread()
        patch = f"*** Begin Patch\n*** Delete File: {secret}\n*** End Patch"
        mock_model.script(Call(name="apply_patch", arguments={"input": patch}), Text(text="gone"), thread_id=thread.thread_id)
        assert await thread.ask("delete it", approve=accept) == "gone"
        assert not secret.exists()
        kept = Path(thread.rollout_path).read_text()
    assert '"apply_patch_approval_request"' in kept
    assert "do-not-store-me" not in kept
