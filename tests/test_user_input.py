"""The model's `request_user_input` tool and the collaboration mode that gates it: refused in
Default mode, an `item/tool/requestUserInput` request in Plan mode (`waitingOnUserInput`,
`serverRequest/resolved`), the answers given to the model as JSON; the mode on turn/start
(experimental), its instructions, `collaborationMode/list`, the rollout and resume; embedding."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import trio

from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure
from spindle.persistence.reader import read_rollout
from spindle.protocol.events import RequestUserInputEvent, TaskCompleteEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp
from spindle.protocol.rollout import TurnContextItem
from spindle.protocol.settings import CollaborationMode, SettingsUpdate

from .helpers import app_client, collect_until

USER_INPUT = "item/tool/requestUserInput"
QUESTION = {"id": "q1", "header": "Pick", "question": "Which one?",
            "options": [{"label": "A", "description": "first"}, {"label": "B", "description": "second"}]}
ASK = Call(name="request_user_input", arguments={"questions": [QUESTION]}, call_id="call_rui_1")
PLAN = {"mode": "plan", "settings": {"model": "mock-model", "reasoning_effort": "medium", "developer_instructions": None}}
DEFAULT = {"mode": "default", "settings": {"model": "mock-model", "reasoning_effort": None, "developer_instructions": None}}




def outputs(mock: MockModel) -> list[str]:
    return [i["output"] for i in mock.requests[-1].json()["input"] if i["type"] == "function_call_output"]


def flags(client: RpcClient, thread_id: str) -> list[list[str]]:
    return [n["params"]["status"].get("activeFlags", []) for n in client.notifications
            if n["method"] == "thread/status/changed" and n["params"]["threadId"] == thread_id
            and n["params"]["status"]["type"] == "active"]


def mode_messages(mock: MockModel, request: int = -1) -> list[str]:
    """The `<collaboration_mode>` developer messages of a model request."""
    return [i["content"][0]["text"] for i in mock.requests[request].json()["input"]
            if i["type"] == "message" and i["role"] == "developer"
            and i["content"][0]["text"].startswith("<collaboration_mode>")]


async def start_turn(client: RpcClient, tid: str, text: str, **params: Any) -> dict[str, Any]:
    body = {"threadId": tid, "input": [{"type": "text", "text": text}], **params}
    return (await client.call("turn/start", body))["turn"]  # type: ignore[no-any-return]


async def test_plan_mode_asks_the_user_over_the_wire_and_the_model_gets_the_answers(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(ASK, Text(text="done"), thread_id=tid)
        turn = await start_turn(client, tid, "plan it", collaborationMode=PLAN)
        request = await client.wait_request(USER_INPUT)
        assert request["params"] == {
            "threadId": tid, "turnId": turn["id"], "itemId": "call_rui_1",
            "questions": [{**QUESTION, "isOther": True, "isSecret": False}],
            "isBlocking": True, "autoResolutionMs": None}
        waiting = {"type": "active", "activeFlags": ["waitingOnUserInput"]}
        assert (await client.call("thread/read", {"threadId": tid}))["thread"]["status"] == waiting
        await client.answer(request["id"], {"answers": {"q1": {"answers": ["A"]}}})
        assert (await client.wait_turn(turn["id"]))["status"] == "completed"
        assert outputs(mock_model) == ['{"answers":{"q1":{"answers":["A"]}}}']
        resolved = await client.wait_for("serverRequest/resolved")
        assert resolved["params"] == {"threadId": tid, "requestId": request["id"]}
        assert flags(client, tid) == [[], ["waitingOnUserInput"], []]
        items = [n["params"]["item"] for n in client.notifications if n["method"] in ("item/started", "item/completed")]
        assert "call_rui_1" not in [item["id"] for item in items]  # no ThreadItem for it, as in Codex
        # the mode's settings apply, and the model is told the mode once, in a developer message
        body = mock_model.requests[0].json()
        assert body["model"] == "mock-model" and body["reasoning"]["effort"] == "medium"
        spec = next(t for t in body["tools"] if t["name"] == "request_user_input")
        assert spec["description"].endswith("This tool is only available in Plan mode.")
        assert spec["parameters"]["required"] == ["questions"]
        [plan] = mode_messages(mock_model)
        assert plan.endswith("</collaboration_mode>") and "Plan mode" in plan


async def test_default_mode_answers_the_model_without_asking_and_the_mode_sticks(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(ASK, Text(text="done"), thread_id=tid)
        await client.run_turn(tid, "no mode yet")  # a thread starts in Default mode
        assert outputs(mock_model) == ["request_user_input is unavailable in Default mode"]
        assert mode_messages(mock_model) == []  # none chosen: no instructions, as in Codex
        mock_model.script(ASK, Text(text="done"), thread_id=tid)
        turn = await start_turn(client, tid, "plan", collaborationMode=PLAN)
        await client.answer((await client.wait_request(USER_INPUT))["id"], {"answers": {"q1": {"answers": ["B"]}}})
        await client.wait_turn(turn["id"])
        mock_model.script(ASK, Text(text="done"), thread_id=tid)
        turn = await start_turn(client, tid, "still planning")  # the mode holds for later turns
        second = await client.wait_request(USER_INPUT, after=1)
        await client.answer(second["id"], {"answers": {"q1": {"answers": ["A"]}}})
        await client.wait_turn(turn["id"])
        assert len(mode_messages(mock_model)) == 1  # told once, not at every turn
        mock_model.script(ASK, Text(text="done"), thread_id=tid)
        await client.wait_turn((await start_turn(client, tid, "go", collaborationMode=DEFAULT))["id"])
        assert outputs(mock_model)[-1] == "request_user_input is unavailable in Default mode"
        assert len(client.server_requests) == 2
        plan, default = mode_messages(mock_model)
        assert "Default mode" in default and default != plan


async def test_collaboration_modes_need_the_experimental_api_and_are_listed(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, app_client(rt) as plain:
        tid = (await plain.call("thread/start", {}))["thread"]["id"]
        with pytest.raises(RpcFailure, match="^-32600: turn/start.collaborationMode requires experimentalApi capability$"):
            await start_turn(plain, tid, "plan", collaborationMode=PLAN)
        with pytest.raises(RpcFailure, match="^-32600: collaborationMode/list requires experimentalApi capability$"):
            await plain.call("collaborationMode/list", {})
        await plain.run_turn(tid, "no mode")  # `collaborationMode: null` is no mode: allowed
        async with app_client(rt, experimental=True) as client:
            assert await client.call("collaborationMode/list", {}) == {"data": [
                {"name": "Plan", "mode": "plan", "model": None, "reasoning_effort": "medium"},
                {"name": "Default", "mode": "default", "model": None, "reasoning_effort": None}]}
            with pytest.raises(RpcFailure, match="-32602.*collaborationMode.mode"):
                await start_turn(client, tid, "x", collaborationMode={**PLAN, "mode": "execute"})


async def test_a_bad_answer_draws_a_warning_and_an_error_answer_tells_the_model(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(ASK, ASK, Text(text="done"), thread_id=tid)
        turn = await start_turn(client, tid, "plan", collaborationMode=PLAN)
        request = await client.wait_request(USER_INPUT)
        for bad in ({"answers": {"q1": "A"}}, {}, "A"):
            await client.answer(request["id"], bad)
        await client.wait_until(lambda: len([n for n in client.notifications if n["method"] == "warning"]) == 3)
        warnings = [n["params"]["message"] for n in client.notifications if n["method"] == "warning"]
        assert all("the request is still pending" in w and '{"answers":' in w for w in warnings)
        assert "serverRequest/resolved" not in client.methods()
        assert (await client.call("thread/read", {"threadId": tid}))["thread"]["status"]["activeFlags"] == ["waitingOnUserInput"]
        await client.send_raw(b'{"id": %d, "error": {"code": -32000, "message": "no UI here"}}\n' % request["id"])
        second = await client.wait_request(USER_INPUT, after=1)  # the turn went on: the model asks again
        await client.answer(second["id"], {"answers": {"q1": {"answers": ["B"], "extra": 1}}})
        assert (await client.wait_turn(turn["id"]))["status"] == "completed"
        assert outputs(mock_model) == ["request_user_input failed: the client answered with an error: no UI here",
                                       '{"answers":{"q1":{"answers":["B"]}}}']


async def test_an_interrupt_while_asking_resolves_the_request_and_aborts_the_turn(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(ASK, Text(text="never"), thread_id=tid)
        turn = await start_turn(client, tid, "plan", collaborationMode=PLAN)
        request = await client.wait_request(USER_INPUT)
        await client.call("turn/interrupt", {"threadId": tid, "turnId": turn["id"]})
        assert (await client.wait_turn(turn["id"]))["status"] == "interrupted"
        resolved = await client.wait_for("serverRequest/resolved")
        assert resolved["params"] == {"threadId": tid, "requestId": request["id"]}
        assert flags(client, tid) == [[], ["waitingOnUserInput"], []]
        assert rt.get_thread(tid).pending_requests() == []
        await client.answer(request["id"], {"answers": {"q1": {"answers": ["A"]}}})  # too late
        await client.wait_for("warning", lambda p: "no such request is pending" in p["message"])


async def test_questions_without_options_are_refused_to_the_model(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    bare = Call(name="request_user_input", arguments={"questions": [{**QUESTION, "options": []}]})
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        mock_model.script(bare, Text(text="done"), thread_id=tid)
        await client.wait_turn((await start_turn(client, tid, "plan", collaborationMode=PLAN))["id"])
        assert outputs(mock_model) == ["request_user_input requires non-empty options for every question"]
        assert client.server_requests == []


async def test_the_mode_is_recorded_per_turn_and_a_resume_restores_it(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    own = {**PLAN, "settings": {**PLAN["settings"], "developer_instructions": "Plan carefully."}}
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        await client.run_turn(tid, "default")
        await client.wait_turn((await start_turn(client, tid, "plan", collaborationMode=own))["id"])
        path = rt.get_thread(tid).rollout_path
    contexts = [item for item in read_rollout(path).source.iter_forward_from(0) if isinstance(item, TurnContextItem)]
    recorded = [json.loads(line)["payload"]["collaboration_mode"] for line in path.read_text().splitlines()
                if json.loads(line)["type"] == "turn_context"]
    assert len(contexts) == 2 and recorded == [
        {"mode": "default", "settings": {"model": "mock-model", "reasoning_effort": None, "developer_instructions": None}},
        {"mode": "plan", "settings": {"model": "mock-model", "reasoning_effort": "medium",
                                      "developer_instructions": "Plan carefully."}}]
    assert mode_messages(mock_model) == ["<collaboration_mode>Plan carefully.</collaboration_mode>"]
    async with make_runtime() as rt, app_client(rt, experimental=True) as client:
        resumed = await client.call("thread/resume", {"threadId": tid})
        assert resumed["collaborationMode"] == {"mode": "plan", "settings": {
            "model": "mock-model", "reasoning_effort": resumed["reasoningEffort"], "developer_instructions": "Plan carefully."}}
        mock_model.script(ASK, Text(text="done"), thread_id=tid)
        turn = await start_turn(client, tid, "go on")
        await client.answer((await client.wait_request(USER_INPUT))["id"], {"answers": {"q1": {"answers": ["A"]}}})
        await client.wait_turn(turn["id"])
        assert outputs(mock_model)[-1] == '{"answers":{"q1":{"answers":["A"]}}}'
        assert len(mode_messages(mock_model)) == 1  # the history has it already: not repeated


async def test_an_embedding_answers_the_models_questions(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime() as rt:
        with trio.fail_after(30):  # nothing may hang
            thread = await rt.start_thread(SettingsUpdate(collaboration_mode=CollaborationMode(mode="plan")))
            assert thread.settings.collaboration_mode.mode == "plan"
            assert thread.settings.collaboration_mode.developer_instructions  # the built-in ones
            mock_model.script(ASK, Text(text="done"), thread_id=thread.thread_id)
            assert await thread.ask("no answerer") == "done"  # nothing hangs: the model is told
            assert outputs(mock_model) == ["request_user_input failed: no one can answer questions here"]

            async def answer(request: RequestUserInputEvent) -> Mapping[str, Sequence[str]]:
                assert [q.id for q in request.questions] == ["q1"] and request.questions[0].is_other
                return {"q1": ["B"]}

            mock_model.script(ASK, Text(text="done"), thread_id=thread.thread_id)
            assert await thread.ask("with one", answer_questions=answer) == "done"
            assert outputs(mock_model)[-1] == '{"answers":{"q1":{"answers":["B"]}}}'
            mock_model.script(ASK, Text(text="done"), thread_id=thread.thread_id)
            with thread.events() as events:
                await thread.submit(UserInputOp(items=[TextInput(text="through approvals()")]))
                await collect_until(events, RequestUserInputEvent)  # pending before the stream opens
                assert thread.waiting_on_user_input and not thread.waiting_on_approval
                with thread.approvals() as requests:
                    async for request in requests:
                        await request.answer({"q1": ["A", "B"]})
                        break
                await collect_until(events, TaskCompleteEvent)
            assert outputs(mock_model)[-1] == '{"answers":{"q1":{"answers":["A","B"]}}}'
