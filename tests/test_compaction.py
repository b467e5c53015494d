"""Compaction: the model summarises the history, which is replaced by the summary and the recent
user messages; by hand (`compact` op, `thread/compact/start`) or when a turn's context passes the
auto-compact limit. The `compacted` rollout line carries the replacement, so resume and fork
start from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import ThreadManager
from spindle.actors.runtime.compact import (
    COMPACTION_PROMPT,
    HEADS_UP,
    SUMMARY_PREFIX,
    auto_compact_limit,
    compacted_history,
)
from spindle.actors.runtime.errors import TurnError
from spindle.actors.testing.mock_model import Call, HttpError, MockModel, MockRequest, Stall, Text
from spindle.persistence.history import ForkSnapshot
from spindle.protocol.events import (
    ContextCompactedEvent,
    ErrorEvent,
    ItemCompletedEvent,
    ItemStartedEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TurnAbortedEvent,
    WarningEvent,
)
from spindle.protocol.items import (
    ContextCompactionItem,
    InputText,
    Message,
    ResponseItem,
    TextInput,
    turn_aborted_marker,
)
from spindle.protocol.ops import CompactOp, UserInputOp

from .helpers import app_client, collect_until, kinds

SUMMARY = "SUMMARY: the user asked two things; both answered."


def summary_text(summary: str = SUMMARY) -> str:
    return f"{SUMMARY_PREFIX}\n{summary}"


def said(request: MockRequest) -> list[tuple[str, str]]:
    """The request's input as (role, text) per message, `call` / `output` for tool items."""
    out: list[tuple[str, str]] = []
    for item in request.json()["input"]:
        if item["type"] == "message":
            out.append((item["role"], "".join(part.get("text", "") for part in item["content"])))
        else:
            out.append((item["type"], ""))
    return out


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def env(text: str) -> bool:
    return text.startswith("<environment_context>")


async def two_turns(thread: Any) -> None:
    assert await thread.ask("first question") == "echo: first question"
    assert await thread.ask("second question") == "echo: second question"


# --- manual compaction ----------------------------------------------------------


async def test_compaction_asks_the_model_for_a_summary_of_the_history(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    await two_turns(thread)
    history = said(mock_model.requests[-1]) + [("assistant", "echo: second question")]
    mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
    await thread.compact()
    request = mock_model.requests[-1].json()
    assert request["tools"] == []  # a summary, nothing to call
    assert said(mock_model.requests[-1]) == [*history, ("user", COMPACTION_PROMPT)]
    assert request["instructions"] == mock_model.requests[-2].json()["instructions"]
    assert request["prompt_cache_key"] == thread.thread_id


async def test_the_next_turn_sends_the_summary_and_the_user_messages(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    await two_turns(thread)
    mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
    await thread.compact()
    assert list(thread.history) == [
        Message(role="user", content=[InputText(text="first question")]),
        Message(role="user", content=[InputText(text="second question")]),
        Message(role="user", content=[InputText(text=summary_text())]),
    ]
    assert await thread.ask("third") == "echo: third"
    sent = said(mock_model.requests[-1])
    assert [text for _, text in sent if not env(text)] == ["first question", "second question", summary_text(), "third"]
    assert all(role == "user" for role, _ in sent)  # the old answers are gone
    assert env(sent[3][1])  # the initial context, given again after the summary, as Codex does


async def test_compaction_events_and_the_compacted_line(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    await two_turns(thread)
    mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(CompactOp())
        seen = await collect_until(events, TaskCompleteEvent)
    assert kinds(seen) == [  # the second token count is the compacted history's estimate
        "task_started", "item_started", "token_count", "token_count", "item_completed", "context_compacted",
        "warning", "task_complete",
    ]
    started, completed = seen[1].msg, seen[4].msg
    assert isinstance(started, ItemStartedEvent) and isinstance(completed, ItemCompletedEvent)
    assert isinstance(started.item, ContextCompactionItem) and completed.item == started.item
    assert isinstance(seen[-2].msg, WarningEvent) and seen[-2].msg.message == HEADS_UP
    assert isinstance(seen[-1].msg, TaskCompleteEvent) and seen[-1].msg.last_agent_message is None
    await thread.rollout.flush()
    lines = rows(thread.rollout_path)
    compacted = [r["payload"] for r in lines if r["type"] == "compacted"]
    assert compacted == [{"message": summary_text(), "replacement_history": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first question"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second question"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": summary_text()}]},
    ]}]
    tail = [r["type"] if r["type"] != "event_msg" else r["payload"]["type"] for r in lines]
    tail = tail[tail.index("task_started", len(tail) - 8):]
    assert tail == ["task_started", "token_count", "token_count", "compacted", "item_completed", "context_compacted",
                    "task_complete"]


async def test_resume_after_a_compaction_in_a_new_runtime(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        await two_turns(thread)
        mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
        await thread.compact()
        tid, history = thread.thread_id, list(thread.history)
    async with make_runtime() as rt:
        resumed = await rt.resume_thread(tid)
        assert resumed.history == history and resumed.load_warning is None
        assert await resumed.ask("third") == "echo: third"
        sent = said(mock_model.requests[-1])
        assert [text for _, text in sent if not env(text)] == ["first question", "second question", summary_text(), "third"]
        assert env(sent[3][1])  # the initial context is given again after a resume too


async def test_a_fork_after_a_compaction_starts_from_the_replacement(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    await two_turns(thread)
    mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
    await thread.compact()
    fork = await runtime.fork_thread(ForkSnapshot.interrupted(), thread.thread_id)
    assert fork.history == thread.history
    assert await fork.ask("on the fork") == "echo: on the fork"
    sent = [text for _, text in said(mock_model.requests[-1]) if not env(text)]
    assert sent == ["first question", "second question", summary_text(), "on the fork"]


async def test_thread_compact_start_over_the_wire(runtime: ThreadManager, mock_model: MockModel) -> None:
    async with app_client(runtime) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        await client.run_turn(tid, "first question")
        mock_model.script(Text(text=SUMMARY), thread_id=tid)
        mark = len(client.notifications)
        assert await client.call("thread/compact/start", {"threadId": tid}) == {}
        done = await client.wait_for("turn/completed", after=mark)
        methods = [m for m in client.methods(mark) if m != "thread/tokenUsage/updated"]
        assert methods == [
            "thread/status/changed", "turn/started", "item/started", "item/completed", "thread/compacted",
            "warning", "thread/status/changed", "turn/completed",
        ]
        notes = {n["method"]: n["params"] for n in client.notifications[mark:]}
        turn_id = notes["turn/started"]["turn"]["id"]
        item = notes["item/started"]["item"]
        assert item == {"type": "contextCompaction", "id": item["id"]} and notes["item/completed"]["item"] == item
        assert notes["thread/compacted"] == {"threadId": tid, "turnId": turn_id}
        assert notes["warning"]["message"] == HEADS_UP
        assert done["params"]["turn"]["status"] == "completed"
        assert [i["type"] for i in done["params"]["turn"]["items"]] == ["contextCompaction"]
        read = await client.call("thread/read", {"threadId": tid, "includeTurns": True})
        turns = read["thread"]["turns"]
        assert [[i["type"] for i in t["items"]] for t in turns] == [["userMessage", "agentMessage"], ["contextCompaction"]]
        assert turns[1]["id"] == turn_id and turns[1]["status"] == "completed"


# --- bad input ------------------------------------------------------------------


async def test_compact_on_a_thread_with_no_turns_is_refused(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    with pytest.raises(TurnError, match="has no turns to compact"):
        await thread.compact()
    outcome = await thread.submit_and_wait(CompactOp())
    assert outcome.error is not None and outcome.turn_id is None
    assert mock_model.requests == [] and not thread.rollout.persisted  # nothing asked, nothing written
    async with app_client(runtime) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        reply = await client.send_message({"id": 7, "method": "thread/compact/start", "params": {"threadId": tid}})
        assert reply["error"]["code"] == -32600 and "has no turns to compact" in reply["error"]["message"]


async def test_a_model_failure_during_compaction_fails_the_turn_and_keeps_the_history(
    runtime: ThreadManager, mock_model: MockModel
) -> None:
    thread = await runtime.start_thread()
    await two_turns(thread)
    before = list(thread.history)
    mock_model.script(HttpError(status=400, message="no summary today"), thread_id=thread.thread_id)
    with thread.events() as events:
        with pytest.raises(TurnError, match="no summary today"):
            await thread.compact()
        seen = await collect_until(events, TaskCompleteEvent)
    assert not any(isinstance(ev.msg, ContextCompactedEvent) for ev in seen)
    assert thread.history == before
    await thread.rollout.flush()
    assert not [r for r in rows(thread.rollout_path) if r["type"] == "compacted"]
    assert await thread.ask("third") == "echo: third"
    assert [t for _, t in said(mock_model.requests[-1]) if not env(t)][:4] == [
        "first question", "echo: first question", "second question", "echo: second question"]


def stall_model(mock: MockModel) -> trio.Event:
    """Make every reply of `mock` stall; the event is set once it is asked."""
    asked = trio.Event()

    def stall(_request: MockRequest) -> Stall:
        asked.set()
        return Stall()

    mock.default = stall
    return asked


async def test_an_interrupted_compaction_leaves_the_history_unchanged(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    await two_turns(thread)
    before = list(thread.history)
    asked = stall_model(mock_model)
    with thread.events() as events:
        await thread.submit(CompactOp())
        await asked.wait()  # the summary is being written
        assert await thread.interrupt() is not None
        seen = await collect_until(events, TurnAbortedEvent)
    assert not any(isinstance(ev.msg, ContextCompactedEvent | TaskCompleteEvent) for ev in seen)
    assert thread.history == [*before, turn_aborted_marker()]  # the interrupt's marker, as after any turn
    await thread.rollout.flush()
    assert not [r for r in rows(thread.rollout_path) if r["type"] == "compacted"]


async def test_a_compact_during_a_turn_replaces_that_turn(runtime: ThreadManager, mock_model: MockModel) -> None:
    """As Codex: a new task aborts the running one (`replaced`) and takes its place."""
    thread = await runtime.start_thread()
    asked = stall_model(mock_model)
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="long job")]))
        await asked.wait()
        mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
        await thread.submit(CompactOp())
        seen = await collect_until(events, lambda ev: isinstance(ev.msg, TaskCompleteEvent))
    aborted = [ev.msg for ev in seen if isinstance(ev.msg, TurnAbortedEvent)]
    assert len(aborted) == 1 and aborted[0].reason == "replaced"
    assert kinds(seen).index("turn_aborted") < kinds(seen).index("context_compacted")
    assert thread.history[-1] == Message(role="user", content=[InputText(text=summary_text())])


# --- automatic compaction -----------------------------------------------------


def echo_call(text: str, usage: int) -> Call:
    return Call(name="exec_command", arguments={"cmd": f"echo {text}"}, usage=usage)


async def test_auto_compaction_mid_turn_then_resume(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime(model_auto_compact_token_limit=1000) as rt:
        thread = await rt.start_thread()
        mock_model.script(
            echo_call("hi", usage=1500),      # over the limit, and the model goes on: compact first
            Text(text=SUMMARY, usage=300),    # the summary
            Text(text="done", usage=400),     # the same turn, sampled again on the compacted history
            thread_id=thread.thread_id,
        )
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="do work")]))
            seen = await collect_until(events, TaskCompleteEvent)
        assert sum(isinstance(ev.msg, TaskStartedEvent) for ev in seen) == 1  # one turn throughout
        assert "context_compacted" in kinds(seen) and isinstance(seen[-1].msg, TaskCompleteEvent)
        assert seen[-1].msg.last_agent_message == "done"
        assert not any(isinstance(ev.msg, ErrorEvent) for ev in seen)
        summary_request, after = mock_model.requests[-2], mock_model.requests[-1]
        assert said(summary_request)[-3:] == [("function_call", ""), ("function_call_output", ""), ("user", COMPACTION_PROMPT)]
        assert summary_request.json()["tools"] == []
        sent = said(after)  # the initial context stays, just before the last user message
        assert env(sent[0][1]) and sent[1:] == [("user", "do work"), ("user", summary_text())]
        assert after.json()["tools"] != []
        tid, history = thread.thread_id, list(thread.history)
        last = history[-1]
        assert isinstance(last, Message) and (last.role, last.text()) == ("assistant", "done")
    async with make_runtime(model_auto_compact_token_limit=1000) as rt:
        resumed = await rt.resume_thread(tid)
        assert resumed.history == history
        mock_model.script(Text(text="again", usage=100), thread_id=tid)
        assert await resumed.ask("next") == "again"
        sent = said(mock_model.requests[-1])
        assert env(sent[0][1]) and sent[1:] == [
            ("user", "do work"), ("user", summary_text()), ("assistant", "done"), ("user", "next")]


async def test_auto_compaction_before_a_turn_over_the_limit(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    """The last turn left the context over the limit: the next one compacts before its input."""
    async with make_runtime(model_auto_compact_token_limit=1000) as rt:
        thread = await rt.start_thread()
        mock_model.script(Text(text="big answer", usage=1200), Text(text=SUMMARY, usage=50),
                          Text(text="small answer", usage=200), thread_id=thread.thread_id)
        assert await thread.ask("one") == "big answer"
        assert await thread.ask("two") == "small answer"
        summary_request, after = mock_model.requests[-2], mock_model.requests[-1]
        assert said(summary_request)[-2:] == [("assistant", "big answer"), ("user", COMPACTION_PROMPT)]
        sent = said(after)
        assert sent[:2] == [("user", "one"), ("user", summary_text())]
        assert env(sent[2][1]) and sent[3:] == [("user", "two")]
        assert await thread.ask("three") == "echo: three"  # 1234 > 1000 again, but only after this turn
        assert said(mock_model.requests[-1])[-3:] == [("user", "two"), ("assistant", "small answer"), ("user", "three")]


def test_the_auto_compact_limit() -> None:
    """Codex's rule: the configured limit, capped at 90% of the context window when it is known."""
    assert auto_compact_limit(None, None) is None
    assert auto_compact_limit(5000, None) == 5000
    assert auto_compact_limit(None, 10_000) == 9000
    assert auto_compact_limit(5000, 10_000) == 5000
    assert auto_compact_limit(50_000, 10_000) == 9000
    assert auto_compact_limit(0, 10_000) == 9000  # not a limit


def test_recent_user_messages_are_kept_newest_first_within_a_budget() -> None:
    def user(text: str) -> ResponseItem:
        return Message(role="user", content=[InputText(text=text)])

    history = [user("<environment_context>x</environment_context>"), user("a" * 400), user("b" * 40), user("c" * 40),
               user(summary_text("old")), Message(role="assistant", content=[])]
    kept = compacted_history(history, "SUM", budget=25)  # tokens: about 4 characters each
    texts = [m.text() for m in kept if isinstance(m, Message)]
    assert texts[1:] == ["b" * 40, "c" * 40, "SUM"]
    assert texts[0].startswith("aaaa") and "tokens truncated" in texts[0] and len(texts[0]) < 100
    assert [m.text() for m in compacted_history(history, "SUM", budget=0)] == ["SUM"]


# --- torn rollouts ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["torn", "corrupt"])
async def test_a_damaged_compacted_line_resumes_from_the_full_history_with_a_warning(
    make_runtime: Callable[..., Any], mock_model: MockModel, damage: str
) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        await two_turns(thread)
        before = list(thread.history)
        mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
        await thread.compact()
        tid, path = thread.thread_id, thread.rollout_path
    data = path.read_bytes().split(b"\n")
    at = next(i for i, line in enumerate(data) if b'"type":"compacted"' in line)
    if damage == "torn":  # the process died writing it: the file ends inside the line
        path.write_bytes(b"\n".join(data[:at]) + b"\n" + data[at][: len(data[at]) // 2])
    else:  # a line that no longer parses, with the rest of the compaction turn after it
        data[at] = data[at][: len(data[at]) // 2]
        path.write_bytes(b"\n".join(data))
    async with make_runtime() as rt, app_client(rt) as client:
        mark = len(client.notifications)
        await client.call("thread/resume", {"threadId": tid})
        warning = await client.wait_for("warning", after=mark)
        assert "compaction" in warning["params"]["message"] and warning["params"]["threadId"] == tid
        resumed = rt.running(tid)
        assert resumed is not None and resumed.load_warning == warning["params"]["message"]
        assert resumed.history[: len(before)] == before
        assert await resumed.ask("third") == "echo: third"
        sent = [t for _, t in said(mock_model.requests[-1]) if not env(t)]
        assert sent[:4] == ["first question", "echo: first question", "second question", "echo: second question"]
