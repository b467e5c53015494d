"""Where the task kinds meet: a user's shell command joining a review, a review's usage and
the thread's compaction, a rollback across a compaction, a fork through a turn that is not a
conversation turn, and the ids of items read back through different spans of a rollout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from spindle.actors.runtime import ThreadManager
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.persistence.paths import now_utc, rollout_path, timestamp
from spindle.protocol.events import (
    AgentMessageEvent,
    EnteredReviewModeEvent,
    ItemCompletedEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    UserMessageEvent,
)
from spindle.protocol.ids import new_id
from spindle.protocol.items import CommandExecutionItem, InputText, Message, OutputText
from spindle.protocol.ops import ReviewOp, RunUserShellCommandOp, ThreadRollbackOp
from spindle.protocol.review import CustomTarget, ReviewRequest
from spindle.protocol.rollout import (
    RolloutLineOut,
    SandboxPolicy,
    SessionMeta,
    TurnContextItem,
    line_type,
)

from .helpers import app_client, collect_until
from .test_compaction import COMPACTION_PROMPT, SUMMARY, env, said

REVIEW = {"findings": [], "overall_correctness": "patch is correct", "overall_explanation": "fine",
          "overall_confidence_score": 0.9}


async def test_a_shell_command_joining_a_review_turn_reaches_the_thread_not_the_reviewer(
    runtime: ThreadManager, mock_model: MockModel
) -> None:
    thread = await runtime.start_thread()
    assert await thread.ask("hello") == "echo: hello"
    gate = trio.Event()
    mock_model.script(Text(text=json.dumps(REVIEW), gate=gate), thread_id=thread.thread_id)
    asked = len(mock_model.requests)
    with thread.events() as events:
        await thread.submit(ReviewOp(review_request=ReviewRequest(target=CustomTarget(instructions="look"))))
        await collect_until(events, EnteredReviewModeEvent)
        await thread.submit(RunUserShellCommandOp(command="echo from-the-user"))
        await collect_until(events, lambda ev: isinstance(ev.msg, ItemCompletedEvent)
                            and isinstance(ev.msg.item, CommandExecutionItem))
        gate.set()
        await collect_until(events, TaskCompleteEvent)
    assert len(mock_model.requests) == asked + 1  # the reviewer was not sampled again for the record
    assert "user_shell_command" not in mock_model.requests[-1].body.decode()
    texts = [m.text() for m in thread.history if isinstance(m, Message)]
    assert any(t.startswith("<user_shell_command>") for t in texts)  # kept by the thread


async def test_a_reviews_usage_does_not_set_off_a_compaction_of_the_thread(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime(model_auto_compact_token_limit=1000) as rt:
        thread = await rt.start_thread()
        tid = thread.thread_id
        mock_model.script(Text(text="small", usage=100), thread_id=tid)
        await thread.ask("hi")
        mock_model.script(Text(text=json.dumps(REVIEW), usage=5000), thread_id=tid)  # a big diff for the reviewer
        await thread.review(CustomTarget(instructions="look"))
        n = len(mock_model.requests)
        mock_model.script(Text(text="next answer", usage=150), thread_id=tid)
        assert await thread.ask("next") == "next answer"
        assert ("user", COMPACTION_PROMPT) not in [said(r)[-1] for r in mock_model.requests[n:]]


async def test_a_rollback_across_a_compaction_gives_the_environment_context_again(
    make_runtime: Callable[..., Any], mock_model: MockModel
) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        assert await thread.ask("first") == "echo: first"
        assert await thread.ask("second") == "echo: second"
        mock_model.script(Text(text=SUMMARY), thread_id=thread.thread_id)
        await thread.compact()
        assert await thread.ask("third") == "echo: third"
        outcome = await thread.submit_and_wait(ThreadRollbackOp(num_turns=2))  # "third" and the compaction's summary
        assert outcome.error is None
        assert await thread.ask("fourth") == "echo: fourth"
        running_sent = said(mock_model.requests[-1])
        running_history = list(thread.history)
        tid = thread.thread_id
    assert any(env(text) for _, text in running_sent)  # as a resumed thread would send it
    async with make_runtime() as rt:
        resumed = await rt.resume_thread(tid)
        assert list(resumed.history) == running_history


async def test_a_fork_through_a_turn_after_a_compaction_ends_with_that_turn(runtime: ThreadManager, mock_model: MockModel) -> None:
    async with app_client(runtime) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        await client.run_turn(tid, "one")
        mock_model.script(Text(text=SUMMARY), thread_id=tid)
        assert await client.call("thread/compact/start", {"threadId": tid}) == {}
        await client.wait_for("turn/completed", lambda p: p["turn"]["items"] and p["turn"]["items"][0]["type"] == "contextCompaction")
        await client.run_turn(tid, "two")
        await client.run_turn(tid, "three")
        turns = (await client.call("thread/turns/list", {"threadId": tid, "sortDirection": "asc"}))["data"]
        ids = [t["id"] for t in turns]
        assert len(ids) == 4
        fork = await client.call("thread/fork", {"threadId": tid, "lastTurnId": ids[2]})  # through "two"
        fork_turns = (await client.call("thread/turns/list", {"threadId": fork["thread"]["id"], "sortDirection": "asc"}))["data"]
        assert [t["id"] for t in fork_turns] == ids[:3]


async def test_a_fork_through_a_shell_command_turn_ends_with_that_turn(runtime: ThreadManager, mock_model: MockModel) -> None:
    async with app_client(runtime) as client:
        tid = (await client.call("thread/start", {}))["thread"]["id"]
        await client.run_turn(tid, "one")
        assert await client.call("thread/shellCommand", {"threadId": tid, "command": "echo hi"}) == {}
        await client.wait_for("turn/completed", lambda p: p["turn"]["items"] and p["turn"]["items"][0]["type"] == "commandExecution")
        await client.run_turn(tid, "two")
        await client.run_turn(tid, "three")
        ids = [t["id"] for t in (await client.call("thread/turns/list", {"threadId": tid, "sortDirection": "asc"}))["data"]]
        assert len(ids) == 4
        fork = await client.call("thread/fork", {"threadId": tid, "lastTurnId": ids[1]})  # through the shell turn
        fork_ids = [t["id"] for t in (await client.call("thread/turns/list", {"threadId": fork["thread"]["id"], "sortDirection": "asc"}))["data"]]
        assert fork_ids == ids[:2]


def write_legacy(home: Path, cwd: str, turns: int) -> tuple[str, list[str]]:
    """A rollout as Codex writes it in its legacy mode: no `item_completed` events."""
    created = now_utc()
    tid = new_id()
    meta = SessionMeta(id=tid, session_id=tid, timestamp=timestamp(created), cwd=cwd, cli_version="0.171.0",
                       model_provider="mock")
    path = rollout_path(home, tid, created)
    path.parent.mkdir(parents=True, exist_ok=True)
    items: list[Any] = [meta]
    ids = []
    for n in range(turns):
        turn_id = new_id()
        ids.append(turn_id)
        items += [
            TurnContextItem(cwd=cwd, approval_policy="never", model="mock-model", turn_id=turn_id,
                            sandbox_policy=SandboxPolicy(type="danger-full-access")),
            TaskStartedEvent(turn_id=turn_id),
            Message(role="user", content=[InputText(text=f"q{n}")]),
            UserMessageEvent(message=f"q{n}"),
            Message(role="assistant", content=[OutputText(text=f"a{n}")]),
            AgentMessageEvent(message=f"a{n}"),
            TaskCompleteEvent(turn_id=turn_id, last_agent_message=f"a{n}"),
        ]
    enc = msgspec.json.Encoder()
    with open(path, "wb") as out:
        for o, item in enumerate(items):
            out.write(enc.encode(RolloutLineOut(timestamp=timestamp(created), ordinal=o, type=line_type(item), payload=item)) + b"\n")
    return tid, ids


async def test_items_of_a_rollout_codex_wrote_keep_their_ids_across_listings(runtime: ThreadManager, tmp_path: Path) -> None:
    home = runtime.store.home
    tid, ids = write_legacy(home, str(tmp_path), 5)
    async with app_client(runtime, experimental=True) as client:
        page = await client.call("thread/turns/list", {"threadId": tid, "sortDirection": "asc", "limit": 3, "itemsView": "full"})
        middle = page["data"][1]
        item_ids = [i["id"] for i in middle["items"]]
        alone = await client.call("thread/items/list", {"threadId": tid, "turnId": middle["id"]})
        assert [e["item"]["id"] for e in alone["data"]] == item_ids  # the same ids, whatever span was read
        read = await client.call("thread/items/read", {"threadId": tid, "turnId": middle["id"], "itemIds": item_ids})
        assert [e["item"]["id"] for e in read["data"]] == item_ids
