"""Code review: `review/start` inline and detached, on a git repository made in the test, its git
inputs (run in the sandbox) in the reviewer's request, its items, and the review output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle import SettingsUpdate, ThreadManager, TurnError
from spindle.actors.appserver.turns import build_turns
from spindle.actors.runtime import sandbox
from spindle.actors.runtime.review_git import git_capture
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure
from spindle.protocol.events import (
    AgentMessageEvent,
    EnteredReviewModeEvent,
    ExitedReviewModeEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
)
from spindle.protocol.items import Message
from spindle.protocol.review import (
    CodeLocation,
    CommitTarget,
    CustomTarget,
    LineRange,
    ReviewFinding,
    ReviewOutput,
    UncommittedChangesTarget,
    parse_review_output,
    render_review_output,
)

from .sandbox_helpers import needs_bwrap

FINDING = {
    "title": "[P1] Guard the empty list",
    "body": "`first()` indexes `items[0]` without checking that the list has any item.",
    "confidence_score": 0.8,
    "priority": 1,
    "code_location": {"absolute_file_path": "/repo/app.py", "line_range": {"start": 2, "end": 3}},
}
REVIEW = {
    "findings": [FINDING],
    "overall_correctness": "patch is incorrect",
    "overall_explanation": "The new helper fails on an empty list.",
    "overall_confidence_score": 0.7,
}


async def git(repo: Path, *args: str) -> str:
    result = await trio.run_process(["git", *args], cwd=repo, capture_stdout=True, capture_stderr=True)
    return result.stdout.decode()  # type: ignore[no-any-return]


async def make_repo(path: Path) -> Path:
    """A repository on branch `main` with one commit of `app.py`."""
    path.mkdir(exist_ok=True)
    await git(path, "init", "-q", "-b", "main")
    await git(path, "config", "user.name", "Spindle Tests")
    await git(path, "config", "user.email", "tests@example.invalid")
    await git(path, "config", "commit.gpgsign", "false")
    (path / "app.py").write_text("def first(items):\n    return items[0]\n")
    await commit(path, "Add first()")
    return path


async def commit(repo: Path, message: str) -> str:
    await git(repo, "add", "-A")
    await git(repo, "commit", "-q", "-m", message)
    return (await git(repo, "rev-parse", "HEAD")).strip()


async def start_thread(client: RpcClient, cwd: Path) -> str:
    thread = (await client.call("thread/start", {"cwd": str(cwd)}))["thread"]
    await client.wait_for("thread/started", lambda p: p["thread"]["id"] == thread["id"])
    return thread["id"]  # type: ignore[no-any-return]


async def review(client: RpcClient, thread_id: str, target: dict[str, Any], **params: Any) -> dict[str, Any]:
    """review/start, then the `turn/completed` of its review turn; the answer, with that turn."""
    answer = await client.call("review/start", {"threadId": thread_id, "target": target, **params})
    answer["completed"] = await client.wait_turn(answer["turn"]["id"])
    return answer


def items(client: RpcClient, turn_id: str, kind: str) -> list[dict[str, Any]]:
    """The `item/completed` items of type `kind` of turn `turn_id`, in order."""
    return [n["params"]["item"] for n in client.notifications
            if n["method"] == "item/completed" and n["params"]["turnId"] == turn_id and n["params"]["item"]["type"] == kind]


def user_texts(request_body: dict[str, Any]) -> list[str]:
    return ["".join(part.get("text", "") for part in item["content"])
            for item in request_body["input"] if item.get("type") == "message" and item["role"] == "user"]


# --- inline reviews ---------------------------------------------------------------------------


@needs_bwrap
async def test_inline_review_of_uncommitted_changes(client: RpcClient, mock_model: MockModel, tmp_path: Path) -> None:
    repo = await make_repo(tmp_path / "repo")
    (repo / "app.py").write_text("def first(items):\n    return items[0] if items else None\n")
    (repo / "staged.py").write_text("STAGED = 1\n")
    await git(repo, "add", "staged.py")
    (repo / "fresh.py").write_text("UNTRACKED_MARKER = 2\n")
    thread_id = await start_thread(client, repo)
    mock_model.script(Text(text=json.dumps(REVIEW)))

    answer = await review(client, thread_id, {"type": "uncommittedChanges"})

    assert answer["reviewThreadId"] == thread_id
    turn_id = answer["turn"]["id"]
    assert answer["completed"]["status"] == "completed"
    body = mock_model.requests[-1].json()
    assert "overall_correctness" in body["instructions"] and "[P0]" in body["instructions"]
    assert [tool["name"] for tool in body["tools"]] == ["exec_command"]
    prompt = user_texts(body)[-1]
    assert "staged, unstaged and untracked" in prompt
    assert "+    return items[0] if items else None" in prompt  # the unstaged diff
    assert "+STAGED = 1" in prompt  # the staged diff
    assert "+UNTRACKED_MARKER = 2" in prompt  # the untracked file
    assert "?? fresh.py" in prompt  # git status
    assert [i["review"] for i in items(client, turn_id, "enteredReviewMode")] == ["uncommitted changes"]
    (exited,) = items(client, turn_id, "exitedReviewMode")
    assert exited["review"] == render_review_output(parse_review_output(json.dumps(REVIEW)))
    assert "The new helper fails on an empty list." in exited["review"]
    assert "[P1] Guard the empty list — /repo/app.py:2-3" in exited["review"]
    messages = items(client, turn_id, "agentMessage")
    assert [m["text"] for m in messages] == [exited["review"]]  # never the reviewer's raw JSON
    assert not [n for n in client.notifications if n["method"] == "item/agentMessage/delta"
                and n["params"]["turnId"] == turn_id]
    read = await client.call("thread/read", {"threadId": thread_id, "includeTurns": True})
    (turn,) = read["thread"]["turns"]
    assert [item["type"] for item in turn["items"]] == ["enteredReviewMode", "exitedReviewMode", "agentMessage"]


@needs_bwrap
async def test_after_an_inline_review_the_thread_knows_its_results_not_its_prompt(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    repo = await make_repo(tmp_path / "repo")
    (repo / "app.py").write_text("def first(items):\n    return items[-1]\n")
    thread_id = await start_thread(client, repo)
    await client.run_turn(thread_id, "hello before")
    mock_model.script(Text(text=json.dumps(REVIEW)))
    await review(client, thread_id, {"type": "uncommittedChanges"})
    reviewer = user_texts(mock_model.requests[-1].json())
    assert not any("hello before" in text for text in reviewer)  # the reviewer starts afresh

    await client.run_turn(thread_id, "fix it")

    texts = user_texts(mock_model.requests[-1].json())
    assert any("hello before" in text for text in texts)
    (results,) = [text for text in texts if "<user_action>" in text]
    assert "[P1] Guard the empty list" in results and "The new helper fails on an empty list." in results
    assert not any("return items[-1]" in text for text in texts)  # the diff stayed with the reviewer
    answers = [item for item in mock_model.requests[-1].json()["input"] if item.get("role") == "assistant"]
    assert not any("overall_correctness" in json.dumps(item) for item in answers)  # and its raw answer too
    assert texts[-1] == "fix it"


@needs_bwrap
async def test_review_against_a_base_branch_sends_the_merge_base_diff(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    repo = await make_repo(tmp_path / "repo")
    base = (await git(repo, "rev-parse", "HEAD")).strip()
    await git(repo, "checkout", "-q", "-b", "feature")
    (repo / "feature.py").write_text("FEATURE_LINE = 'new'\n")
    await commit(repo, "Add the feature")
    await git(repo, "checkout", "-q", "main")
    (repo / "later.py").write_text("MAIN_ONLY = 1\n")
    await commit(repo, "Main moves on")
    await git(repo, "checkout", "-q", "feature")
    thread_id = await start_thread(client, repo)
    mock_model.script(Text(text=json.dumps(REVIEW)))

    answer = await review(client, thread_id, {"type": "baseBranch", "branch": "main"})

    prompt = user_texts(mock_model.requests[-1].json())[-1]
    assert base in prompt and "'main'" in prompt
    assert "+FEATURE_LINE = 'new'" in prompt and "Add the feature" in prompt
    assert "MAIN_ONLY" not in prompt  # main's own later work is not the branch's change
    turn_id = answer["turn"]["id"]
    assert [i["review"] for i in items(client, turn_id, "enteredReviewMode")] == ["changes against 'main'"]


@needs_bwrap
async def test_review_of_a_commit_sends_git_show(client: RpcClient, mock_model: MockModel, tmp_path: Path) -> None:
    repo = await make_repo(tmp_path / "repo")
    (repo / "app.py").write_text("def first(items):\n    return items[1]\n")
    sha = await commit(repo, "Pick the second item")
    (repo / "app.py").write_text("LATER = True\n")
    await commit(repo, "A later commit")
    thread_id = await start_thread(client, repo)
    mock_model.script(Text(text=json.dumps(REVIEW)))

    answer = await review(client, thread_id, {"type": "commit", "sha": sha[:10], "title": "Pick the second item"})

    prompt = user_texts(mock_model.requests[-1].json())[-1]
    assert sha in prompt and "+    return items[1]" in prompt and "Pick the second item" in prompt
    assert "LATER = True" not in prompt
    turn_id = answer["turn"]["id"]
    assert [i["review"] for i in items(client, turn_id, "enteredReviewMode")] == [f"commit {sha[:7]}: Pick the second item"]


async def test_custom_review_sends_the_instructions_and_runs_no_git(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    thread_id = await start_thread(client, plain)
    mock_model.script(Text(text=json.dumps(REVIEW)))

    answer = await review(client, thread_id, {"type": "custom", "instructions": "  Check the error handling of app.py  "})

    assert answer["completed"]["status"] == "completed"
    body = mock_model.requests[-1].json()
    assert user_texts(body)[-1] == "Check the error handling of app.py"
    assert "overall_correctness" in body["instructions"]
    turn_id = answer["turn"]["id"]
    assert [i["review"] for i in items(client, turn_id, "enteredReviewMode")] == ["Check the error handling of app.py"]


async def test_a_reviewer_that_answers_in_prose_is_shown_as_it_answered(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    thread_id = await start_thread(client, tmp_path)
    mock_model.script(Text(text="Looks fine to me, nothing to flag."))

    answer = await review(client, thread_id, {"type": "custom", "instructions": "review it"})

    (exited,) = items(client, answer["turn"]["id"], "exitedReviewMode")
    assert exited["review"] == "Looks fine to me, nothing to flag."


async def test_a_review_is_written_as_codex_writes_it_and_read_back(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    thread_id = await start_thread(client, tmp_path)
    mock_model.script(Text(text=json.dumps(REVIEW)))
    answer = await review(client, thread_id, {"type": "custom", "instructions": "look at app.py"})
    path = Path((await client.call("thread/read", {"threadId": thread_id}))["thread"]["path"])
    await client.call("thread/unsubscribe", {"threadId": thread_id})
    await client.wait_for("thread/closed", lambda p: p["threadId"] == thread_id)

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    events = [line["payload"] for line in lines if line["type"] == "event_msg" and "review_mode" in line["payload"]["type"]]
    assert events == [
        {"type": "entered_review_mode", "target": {"type": "custom", "instructions": "look at app.py"},
         "user_facing_hint": "look at app.py"},
        {"type": "exited_review_mode", "review_output": REVIEW},
    ]
    read = await client.call("thread/read", {"threadId": thread_id, "includeTurns": True})
    (turn,) = read["thread"]["turns"]
    assert turn["id"] == answer["turn"]["id"] and turn["status"] == "completed"
    assert [item["type"] for item in turn["items"]] == ["enteredReviewMode", "exitedReviewMode", "agentMessage"]


def test_a_review_turn_codex_wrote_reads_back_with_its_items() -> None:
    """Codex's legacy rollouts have no `item_completed`: the answer comes from `agent_message`."""
    output = parse_review_output(json.dumps(REVIEW))
    turns = build_turns([
        TaskStartedEvent(turn_id="t1"),
        EnteredReviewModeEvent(target=UncommittedChangesTarget(), user_facing_hint="current changes"),
        ExitedReviewModeEvent(review_output=output),
        AgentMessageEvent(message=render_review_output(output)),
        TaskCompleteEvent(turn_id="t1"),
    ])
    (turn,) = turns
    assert [(i.__struct_config__.tag, getattr(i, "review", None) or getattr(i, "text", None)) for i in turn.items] == [
        ("enteredReviewMode", "current changes"),
        ("exitedReviewMode", render_review_output(output)),
        ("agentMessage", render_review_output(output)),
    ]


# --- detached reviews -------------------------------------------------------------------------


@needs_bwrap
async def test_detached_review_runs_on_a_new_thread_and_leaves_the_parent_alone(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    repo = await make_repo(tmp_path / "repo")
    (repo / "app.py").write_text("def first(items):\n    return items[-1]\n")
    parent = await start_thread(client, repo)
    await client.run_turn(parent, "parent turn")
    mark = len(client.notifications)
    mock_model.script(Text(text=json.dumps(REVIEW)))

    answer = await review(client, parent, {"type": "uncommittedChanges"}, delivery="detached")

    child = answer["reviewThreadId"]
    assert child != parent
    methods = [(n["method"], n["params"].get("threadId") or n["params"].get("thread", {}).get("id"))
               for n in client.notifications[mark:]]
    started = methods.index(("thread/started", child))
    assert started < methods.index(("turn/started", child))
    note = next(n for n in client.notifications[mark:] if n["method"] == "thread/started")
    assert note["params"]["thread"]["forkedFromId"] == parent
    assert any(n["method"] == "deprecationNotice" for n in client.notifications[mark:])
    assert not [m for m in methods if m[1] == parent and m[0] in ("turn/started", "item/completed")]
    turn_id = answer["turn"]["id"]
    assert len(items(client, turn_id, "exitedReviewMode")) == 1
    assert "+    return items[-1]" in user_texts(mock_model.requests[-1].json())[-1]
    parent_read = await client.call("thread/read", {"threadId": parent, "includeTurns": True})
    assert len(parent_read["thread"]["turns"]) == 1
    child_read = await client.call("thread/read", {"threadId": child, "includeTurns": True})
    assert [t["id"] for t in child_read["thread"]["turns"]][-1] == turn_id

    await client.run_turn(parent, "parent again")
    assert not any("<user_action>" in text for text in user_texts(mock_model.requests[-1].json()))


# --- bad input --------------------------------------------------------------------------------


async def test_review_of_a_cwd_outside_git_is_refused_and_runs_nothing(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    thread_id = await start_thread(client, plain)
    mark, asked = len(client.notifications), len(mock_model.requests)

    for delivery in ("inline", "detached"):
        with pytest.raises(RpcFailure) as err:
            await client.call("review/start", {"threadId": thread_id, "target": {"type": "uncommittedChanges"},
                                               "delivery": delivery})
        assert err.value.code == -32600
        assert "not a git repository" in err.value.message and str(plain) in err.value.message

    assert len(mock_model.requests) == asked
    assert "turn/started" not in client.methods(mark) and "thread/started" not in client.methods(mark)


async def test_a_detached_review_needs_history_to_fork(client: RpcClient, mock_model: MockModel, tmp_path: Path) -> None:
    repo = await make_repo(tmp_path / "repo")
    thread_id = await start_thread(client, repo)
    with pytest.raises(RpcFailure) as err:
        await client.call("review/start", {"threadId": thread_id, "target": {"type": "uncommittedChanges"},
                                           "delivery": "detached"})
    assert err.value.code == -32600 and "no history" in err.value.message
    assert (await client.call("thread/loaded/list", {}))["data"] == [thread_id]


@pytest.mark.parametrize(("target", "code", "message"), [
    ({"type": "wholeRepo"}, -32602, "wholeRepo"),
    ({"type": "custom", "instructions": "   "}, -32600, "instructions must not be empty"),
    ({"type": "baseBranch", "branch": ""}, -32600, "branch must not be empty"),
    ({"type": "commit", "sha": " "}, -32600, "sha must not be empty"),
    ({"type": "custom"}, -32602, "instructions"),
])
async def test_bad_targets_are_refused(client: RpcClient, tmp_path: Path, target: dict[str, Any], code: int, message: str) -> None:
    thread_id = await start_thread(client, tmp_path)
    with pytest.raises(RpcFailure) as err:
        await client.call("review/start", {"threadId": thread_id, "target": target})
    assert err.value.code == code and message in err.value.message


async def test_an_unknown_delivery_is_refused(client: RpcClient, tmp_path: Path) -> None:
    thread_id = await start_thread(client, tmp_path)
    with pytest.raises(RpcFailure) as err:
        await client.call("review/start", {"threadId": thread_id, "target": {"type": "uncommittedChanges"},
                                           "delivery": "elsewhere"})
    assert err.value.code == -32602


async def test_a_missing_sandbox_is_said_and_the_model_is_not_asked(
    client: RpcClient, mock_model: MockModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = await make_repo(tmp_path / "repo")
    monkeypatch.setattr(sandbox, "find_bwrap", lambda exclude, path=None: None)
    thread_id = await start_thread(client, repo)
    asked = len(mock_model.requests)

    answer = await review(client, thread_id, {"type": "uncommittedChanges"})

    assert answer["completed"]["status"] == "failed"
    assert "bubblewrap" in answer["completed"]["error"]["message"]
    assert len(mock_model.requests) == asked
    assert len(items(client, answer["turn"]["id"], "exitedReviewMode")) == 1  # the client leaves review mode


@needs_bwrap
@pytest.mark.parametrize(("target", "said"), [
    ({"type": "commit", "sha": "deadbeef"}, "no such commit"),
    ({"type": "commit", "sha": "--output=/tmp/x"}, "it starts with '-'"),
    ({"type": "baseBranch", "branch": "nowhere"}, "no such branch"),
])
async def test_an_unknown_revision_fails_the_review_before_the_model_is_asked(
    client: RpcClient, mock_model: MockModel, tmp_path: Path, target: dict[str, Any], said: str
) -> None:
    repo = await make_repo(tmp_path / "repo")
    thread_id = await start_thread(client, repo)
    asked = len(mock_model.requests)

    answer = await review(client, thread_id, target)

    assert answer["completed"]["status"] == "failed"
    message = answer["completed"]["error"]["message"]
    assert said in message and (target.get("sha") or target.get("branch")) in message
    assert len(mock_model.requests) == asked


async def test_an_interrupted_review_leaves_review_mode(client: RpcClient, mock_model: MockModel, tmp_path: Path) -> None:
    thread_id = await start_thread(client, tmp_path)
    gate = trio.Event()
    mock_model.script(Text(text=json.dumps(REVIEW), gate=gate))
    turn = (await client.call("review/start", {"threadId": thread_id, "target": {"type": "custom", "instructions": "x"}}))["turn"]
    await client.wait_for("item/completed", lambda p: p["item"]["type"] == "enteredReviewMode")
    with pytest.raises(RpcFailure) as err:  # input does not join a review turn
        await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "and this?"}]})
    assert err.value.code == -32600 and "review" in err.value.message

    await client.call("turn/interrupt", {"threadId": thread_id, "turnId": turn["id"]})
    gate.set()

    assert (await client.wait_turn(turn["id"]))["status"] == "interrupted"
    (exited,) = items(client, turn["id"], "exitedReviewMode")
    assert "interrupted" in exited["review"]


async def test_a_review_waits_for_an_idle_thread(client: RpcClient, mock_model: MockModel, tmp_path: Path) -> None:
    thread_id = await start_thread(client, tmp_path)
    gate = trio.Event()
    mock_model.script(Text(text="busy", gate=gate))
    turn = (await client.call("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "hi"}]}))["turn"]
    with pytest.raises(RpcFailure) as err:
        await client.call("review/start", {"threadId": thread_id, "target": {"type": "custom", "instructions": "x"}})
    assert err.value.code == -32600 and turn["id"] in err.value.message
    gate.set()
    await client.wait_turn(turn["id"])


# --- embedded -----------------------------------------------------------------------------------


@needs_bwrap
async def test_an_embedding_reviews_with_thread_review(runtime: ThreadManager, mock_model: MockModel, tmp_path: Path) -> None:
    repo = await make_repo(tmp_path / "repo")
    (repo / "app.py").write_text("def first(items):\n    return items[-1]\n")
    thread = await runtime.start_thread(SettingsUpdate(cwd=str(repo)))
    mock_model.script(Text(text=json.dumps(REVIEW)))

    output = await thread.review(UncommittedChangesTarget())

    assert output == parse_review_output(json.dumps(REVIEW))
    assert "+    return items[-1]" in user_texts(mock_model.requests[-1].json())[-1]
    kept = [item for item in thread.history if isinstance(item, Message)]
    assert [m.role for m in kept[-2:]] == ["user", "assistant"] and "<user_action>" in kept[-2].text()
    assert kept[-1].text() == render_review_output(output)


async def test_an_embedded_review_that_cannot_start_raises(runtime: ThreadManager, tmp_path: Path) -> None:
    thread = await runtime.start_thread(SettingsUpdate(cwd=str(tmp_path)))
    with pytest.raises(TurnError, match="not a git repository"):
        await thread.review(UncommittedChangesTarget())
    with pytest.raises(TurnError, match="instructions must not be empty"):
        await thread.review(CustomTarget(instructions=" "))


# --- the review output --------------------------------------------------------------------------


def test_review_output_is_read_from_json_prose_or_a_fenced_block() -> None:
    expected = ReviewOutput(
        findings=[ReviewFinding(title=FINDING["title"], body=FINDING["body"], confidence_score=0.8, priority=1,
                                code_location=CodeLocation(absolute_file_path="/repo/app.py", line_range=LineRange(start=2, end=3)))],
        overall_correctness="patch is incorrect", overall_explanation="The new helper fails on an empty list.",
        overall_confidence_score=0.7,
    )
    assert parse_review_output(json.dumps(REVIEW)) == expected
    assert parse_review_output(f"Here it is:\n```json\n{json.dumps(REVIEW)}\n```\n") == expected
    assert parse_review_output("no json here") == ReviewOutput(overall_explanation="no json here")
    assert parse_review_output('{"findings": "not a list"}') == ReviewOutput(overall_explanation='{"findings": "not a list"}')
    assert parse_review_output('{"overall_explanation": "fine"}') == ReviewOutput(overall_explanation="fine")


def test_review_output_renders_explanation_then_findings() -> None:
    text = render_review_output(parse_review_output(json.dumps({**REVIEW, "findings": [FINDING, FINDING]})))
    explanation, findings = text.split("\n\n", 1)
    assert explanation == "The new helper fails on an empty list."
    assert findings.count("- [P1] Guard the empty list — /repo/app.py:2-3\n  `first()` indexes") == 2
    assert render_review_output(ReviewOutput()) != ""


def test_commit_target_hint_is_short() -> None:
    assert CommitTarget(sha="0123456789abcdef").hint() == "commit 0123456"


def test_git_output_is_clipped() -> None:
    capture = git_capture(limit=1000)
    capture.feed(b"a" * 300_000 + b"END")
    clipped = capture.text()
    assert len(clipped) < 1100 and clipped.endswith("END") and "bytes elided" in clipped
