"""Approval requests in the runtime: a tool asks, the `exec_approval` op answers; every way the
wait ends is followed by `ApprovalResolvedEvent`; `approved_for_session` is remembered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import trio
import trio.testing

from spindle.actors.appserver.server import AppServer
from spindle.actors.runtime import ThreadHandle
from spindle.actors.runtime.approvals import Approvals, InProcess, key_text
from spindle.actors.runtime.tools import ToolContext, ToolRegistry
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, in_memory
from spindle.protocol.events import (
    ApprovalRequestEvent,
    ApprovalResolvedEvent,
    ExecApprovalRequestEvent,
    TaskCompleteEvent,
    TurnAbortedEvent,
)
from spindle.protocol.items import TextInput
from spindle.protocol.ops import ExecApprovalOp, InterruptOp, PatchApprovalOp, UserInputOp
from spindle.protocol.settings import ReviewDecision

from .helpers import app_client, collect_until


class AskingTool:
    """Asks to run `argv` (its arguments) and answers with the decision."""

    name = "ask"

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "parameters": {"type": "object", "properties": {}}}

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        request = ExecApprovalRequestEvent(call_id=ctx.call_id, turn_id=ctx.turn_id, command=["touch", arguments],
                                           cwd=ctx.settings.cwd, reason="make a file")
        decision = await ctx.ask_approval(request, ("exec", arguments))
        return f"decision: {decision}"


def outputs(mock: MockModel) -> list[str]:
    return [item["output"] for item in mock.requests[-1].json()["input"] if item["type"] == "function_call_output"]


async def ask_twice(thread: ThreadHandle, mock: MockModel) -> None:
    mock.script(Call(name="ask", arguments="f"), Call(name="ask", arguments="f"), Text(text="done"),
                thread_id=thread.thread_id)


async def answer_each(thread: ThreadHandle, decision: ReviewDecision, stop: type) -> list[Any]:
    """Run a turn, answering each approval request with `decision`; the events until `stop`."""
    seen: list[Any] = []
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="go")]))
        with trio.fail_after(10):
            async for event in events:
                seen.append(event.msg)
                if isinstance(event.msg, ExecApprovalRequestEvent):
                    await thread.submit(ExecApprovalOp(id=event.msg.call_id, decision=decision))
                if isinstance(event.msg, stop):
                    return seen
    raise AssertionError("events ended")


async def test_a_request_waits_for_its_answer_and_the_model_gets_the_decision(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        await ask_twice(thread, mock_model)
        seen = await answer_each(thread, "approved", TaskCompleteEvent)
        assert outputs(mock_model) == ["decision: approved", "decision: approved"]
        requests = [m for m in seen if isinstance(m, ExecApprovalRequestEvent)]
        resolved = [m for m in seen if isinstance(m, ApprovalResolvedEvent)]
        assert [r.command for r in requests] == [["touch", "f"], ["touch", "f"]]
        assert [(r.call_id, r.decision) for r in resolved] == [(q.call_id, "approved") for q in requests]


async def test_approved_for_session_is_not_asked_again(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        await ask_twice(thread, mock_model)
        seen = await answer_each(thread, "approved_for_session", TaskCompleteEvent)
        assert len([m for m in seen if isinstance(m, ExecApprovalRequestEvent)]) == 1
        assert outputs(mock_model) == ["decision: approved_for_session", "decision: approved_for_session"]


async def test_denied_goes_on_and_abort_interrupts_the_turn(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        await ask_twice(thread, mock_model)
        await answer_each(thread, "denied", TaskCompleteEvent)
        assert outputs(mock_model) == ["decision: denied", "decision: denied"]
        mock_model.script(Call(name="ask", arguments="g"), Text(text="never"), thread_id=thread.thread_id)
        seen = await answer_each(thread, "abort", TurnAbortedEvent)
        resolved = [m for m in seen if isinstance(m, ApprovalResolvedEvent)]
        assert [r.decision for r in resolved] == ["abort"]


async def test_an_interrupt_clears_a_pending_request_and_a_late_answer_is_refused(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="ask", arguments="f"), Text(text="never"), thread_id=thread.thread_id)
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="go")]))
            request = (await collect_until(events, ExecApprovalRequestEvent))[-1].msg
            assert isinstance(request, ExecApprovalRequestEvent)
            assert [r.call_id for _, r in thread.pending_requests()] == [request.call_id]
            await thread.submit(InterruptOp())
            msgs = [m.msg for m in await collect_until(events, TurnAbortedEvent)]
        assert ApprovalResolvedEvent(call_id=request.call_id, decision=None) in msgs
        assert thread.pending_requests() == []
        outcome = await thread.submit_and_wait(PatchApprovalOp(id=request.call_id, decision="approved"))
        assert outcome.error is not None and "no client request" in outcome.error.message


# --- over the app-server ------------------------------------------------------
COMMAND = "item/commandExecution/requestApproval"


def flags(client: RpcClient, thread_id: str) -> list[list[str]]:
    return [n["params"]["status"].get("activeFlags", []) for n in client.notifications
            if n["method"] == "thread/status/changed" and n["params"]["threadId"] == thread_id
            and n["params"]["status"]["type"] == "active"]


async def test_a_command_approval_round_trip_over_the_wire(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(Call(name="ask", arguments="f"), Text(text="done"), thread_id=tid)
        turn = (await client.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
        request = await client.wait_request(COMMAND)
        assert request["id"] == 0
        params = request["params"]
        assert (params["threadId"], params["turnId"], params["command"], params["reason"]) == (
            tid, turn["id"], "touch f", "make a file")
        waiting = {"type": "active", "activeFlags": ["waitingOnApproval"]}
        assert (await client.call("thread/read", {"threadId": tid}))["thread"]["status"] == waiting
        assert [t["status"] for t in (await client.call("thread/list", {}))["data"] if t["id"] == tid] == [waiting]
        await client.answer(request["id"], {"decision": "bogus"})
        warning = await client.wait_for("warning", lambda p: "bogus" in p["message"])
        assert "allowed: accept, acceptForSession, decline, cancel" in warning["params"]["message"]
        answer = json.dumps({"id": request["id"], "result": {"decision": "acceptForSession"}}).encode() + b"\n"
        await client.send_raw(answer * 2)  # a double click: the second answer must not fail the turn
        completed = await client.wait_turn(turn["id"])
        assert completed["status"] == "completed" and "error" not in client.methods()
        assert outputs(mock_model) == ["decision: approved_for_session"]
        resolved = await client.wait_for("serverRequest/resolved")
        assert resolved["params"] == {"threadId": tid, "requestId": 0}
        assert flags(client, tid) == [[], ["waitingOnApproval"], []]
        await client.answer(0, {"decision": "accept"})  # answered already: changes nothing
        await client.wait_for("warning", lambda p: "no such request is pending" in p["message"])


async def test_two_clients_are_asked_the_first_answer_wins_and_a_late_subscriber_is_asked_too(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt, app_client(rt) as first, app_client(rt) as second:
        tid = (await first.call("thread/start", {}))["thread"]["id"]
        await second.call("thread/resume", {"threadId": tid})
        mock_model.script(Call(name="ask", arguments="f"), Call(name="ask", arguments="g"), Text(text="done"), thread_id=tid)
        turn = (await first.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
        asked_first, asked_second = await first.wait_request(COMMAND), await second.wait_request(COMMAND)
        await second.answer(asked_second["id"], {"decision": "decline"})
        await first.wait_for("serverRequest/resolved", lambda p: p["requestId"] == asked_first["id"])
        await second.wait_for("serverRequest/resolved", lambda p: p["requestId"] == asked_second["id"])
        await first.answer(asked_first["id"], {"decision": "accept"})  # too late: the second one decided
        await first.wait_for("warning", lambda p: "refused" in p["message"])
        # the second request goes to both; a third client that subscribes now is asked too
        await first.wait_request(COMMAND, after=1)
        async with app_client(rt) as third:
            await third.call("thread/resume", {"threadId": tid})
            late = await third.wait_request(COMMAND)
            assert late["params"]["command"] == "touch g"
            await third.answer(late["id"], {"decision": "accept"})
            await first.wait_turn(turn["id"])
        assert outputs(mock_model) == ["decision: denied", "decision: approved"]


async def test_an_embedding_answers_through_thread_approvals(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="ask", arguments="f"), Call(name="ask", arguments="g"), Text(text="done"),
                          thread_id=thread.thread_id)
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="go")]))
            await collect_until(events, ExecApprovalRequestEvent)  # pending before the stream opens
            with thread.approvals() as requests:
                answers = iter(["accept", "decline"])
                async for request in requests:
                    await getattr(request, next(answers))()
                    if request.request.command[-1] == "g":
                        break
            await collect_until(events, TaskCompleteEvent)
        assert outputs(mock_model) == ["decision: approved", "decision: denied"]


async def test_an_approver_that_fails_stops_the_turn_it_held(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="ask", arguments="f"), Text(text="never"), thread_id=thread.thread_id)

        async def broken(request: ApprovalRequestEvent) -> ReviewDecision:
            raise RuntimeError("the approver broke")

        with pytest.raises(RuntimeError, match="the approver broke"):
            await thread.ask("go", approve=broken)
        with trio.fail_after(10):
            while thread.active_turn_id is not None:  # noqa: ASYNC110 - the abort is being handled
                await trio.sleep(0.01)
        assert thread.pending_requests() == []


async def test_approved_for_session_survives_a_resume_in_a_new_runtime(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="ask", arguments="f"), Text(text="done"), thread_id=thread.thread_id)
        await answer_each(thread, "approved_for_session", TaskCompleteEvent)
        tid = thread.thread_id
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt:
        resumed = await rt.resume_thread(tid)
        mock_model.script(Call(name="ask", arguments="f"), Call(name="ask", arguments="g"), Text(text="done"), thread_id=tid)
        seen = await answer_each(resumed, "denied", TaskCompleteEvent)
        asked = [m.command for m in seen if isinstance(m, ExecApprovalRequestEvent)]
        assert asked == [["touch", "g"]]  # `f` was approved for the session before the restart
        assert outputs(mock_model)[-2:] == ["decision: approved_for_session", "decision: denied"]


GRANULAR = {"granular": {"sandbox_approval": False, "rules": True, "mcp_elicitations": True}}


async def test_a_granular_policy_needs_the_experimental_api_and_rejects_what_it_says(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    async with make_runtime() as rt, app_client(rt) as plain:
        with pytest.raises(RpcFailure, match="askForApproval.granular requires experimentalApi capability"):
            await plain.call("thread/start", {"approvalPolicy": GRANULAR})
    async with make_runtime() as rt, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(rt).run)
        async with in_memory(server) as client:
            await client.initialize(experimental=True)
            started = await client.call("thread/start", {"approvalPolicy": GRANULAR, "cwd": str(tmp_path),
                                                          "sandbox": "workspace-write"})
            assert started["approvalPolicy"] == {"granular": {**GRANULAR["granular"], "request_permissions": False,
                                                              "skill_approval": False}}
            tid = started["thread"]["id"]
            escalate = Call(name="exec_command", arguments={
                "cmd": "touch escaped", "sandbox_permissions": "require_escalated", "justification": "please"})
            mock_model.script(escalate, Text(text="done"), thread_id=tid)
            await client.run_turn(tid, "escalate")
            assert outputs(mock_model)[-1].startswith("exec_command refused: the granular approval policy rejects")
            assert client.server_requests == [] and not (tmp_path / "escaped").exists()
            resumed = await client.call("thread/resume", {"threadId": tid})
            assert resumed["approvalPolicy"]["granular"]["sandbox_approval"] is False
        nursery.cancel_scope.cancel()


def test_a_request_key_is_remembered_as_canonical_json() -> None:
    assert key_text(("exec", ("ls", "-la"), False)) == '["exec",["ls","-la"],false]'
    assert key_text(frozenset({"b", "a"})) == key_text(frozenset({"a", "b"})) == '["a","b"]'
    assert key_text(PurePosixPath("/x")).startswith("PurePosixPath(")  # not JSON: kept by its repr


async def test_a_request_waits_out_a_disconnect_and_goes_to_the_next_client(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(rt).run)
        async with in_memory(server) as first:
            await first.initialize()
            tid = (await first.call("thread/start", {}))["thread"]["id"]
            await first.call("thread/resume", {"threadId": tid})
            mock_model.script(Call(name="ask", arguments="f"), Text(text="done"), thread_id=tid)
            turn = (await first.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
            await first.wait_request(COMMAND)
        # the only client left without answering: the thread keeps the request and waits
        handle = rt.get_thread(tid)
        assert [r.call_id for _, r in handle.pending_requests()] != []
        async with in_memory(server) as second:
            await second.initialize()
            await second.call("thread/resume", {"threadId": tid})
            request = await second.wait_request(COMMAND)  # asked again, with this connection's id
            await second.answer(request["id"], {"decision": "accept"})
            assert (await second.wait_turn(turn["id"]))["status"] == "completed"
        assert outputs(mock_model) == ["decision: approved"]
        nursery.cancel_scope.cancel()


async def test_an_in_process_key_is_remembered_but_never_written() -> None:
    emitted: list[Any] = []
    approvals = Approvals(lambda sub_id, msg: emitted.append(msg))
    request = ExecApprovalRequestEvent(call_id="c1", turn_id="t", command=["touch", "x"], cwd="/")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(approvals.ask, "s", request, InProcess(("exec", ("touch", "x"), True)))
        await trio.testing.wait_all_tasks_blocked()
        approvals.answer("c1", "approved_for_session")
    resolved = [m for m in emitted if isinstance(m, ApprovalResolvedEvent)]
    assert resolved == [ApprovalResolvedEvent(call_id="c1", decision="approved_for_session", session_key=None)]
    restarted = Approvals(lambda sub_id, msg: emitted.append(msg))
    restarted.remember(resolved)  # what a resume reads back: the key is not in it
    with trio.move_on_after(0.2) as waited:
        await restarted.ask("s", ExecApprovalRequestEvent(call_id="c3", turn_id="t", command=["touch", "x"], cwd="/"),
                            InProcess(("exec", ("touch", "x"), True)))
    assert waited.cancelled_caught
    again = ExecApprovalRequestEvent(call_id="c2", turn_id="t", command=["touch", "x"], cwd="/")
    assert await approvals.ask("s", again, InProcess(("exec", ("touch", "x"), True))) == "approved_for_session"


async def test_a_client_that_subscribes_mid_turn_hears_the_rest_of_that_turn(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(tools=ToolRegistry([AskingTool()])) as rt, trio.open_nursery() as nursery:
        server = await nursery.start(AppServer(rt).run)
        async with in_memory(server) as first, in_memory(server) as second:
            await first.initialize()
            await second.initialize()
            tid = (await first.call("thread/start", {}))["thread"]["id"]
            mock_model.script(Call(name="ask", arguments="f"), Text(text="all done"), thread_id=tid)
            turn = (await first.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "go"}]}))["turn"]
            await first.wait_request(COMMAND)
            await second.call("thread/resume", {"threadId": tid})  # the turn started before it subscribed
            request = await second.wait_request(COMMAND)
            await second.answer(request["id"], {"decision": "accept"})
            completed = await second.wait_turn(turn["id"])
            deltas = [n["params"] for n in second.notifications if n["method"] == "item/agentMessage/delta"]
            assert deltas and {d["turnId"] for d in deltas} == {turn["id"]}
            assert [i["text"] for i in completed["items"] if i["type"] == "agentMessage"] == ["all done"]
        nursery.cancel_scope.cancel()


async def test_a_request_is_replayed_to_late_subscribers_only_once_it_is_delivered() -> None:
    written = trio.Event()
    delivered: list[Any] = []

    async def emit_durably(sub_id: str, msg: Any) -> None:
        await written.wait()  # the rollout is being synced
        delivered.append(msg)

    approvals = Approvals(lambda sub_id, msg: delivered.append(msg), emit_durably)
    request = ExecApprovalRequestEvent(call_id="c1", turn_id="t", command=["touch", "x"], cwd="/")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(approvals.ask, "s", request, ("exec", "x"))
        await trio.testing.wait_all_tasks_blocked()
        assert approvals.replay() == []  # not on disk yet: the live event will reach a new subscriber
        written.set()
        await trio.testing.wait_all_tasks_blocked()
        assert approvals.replay() == [("s", request)]
        approvals.answer("c1", "approved")
