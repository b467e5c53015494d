"""Rollouts: lazy materialization, resume, fork, rollback, archive."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from spindle.actors.runtime import ThreadManager
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.persistence.history import ForkSnapshot, fork_items, rebuild_history
from spindle.persistence.paths import find_thread_path_by_id
from spindle.persistence.reader import parse_rollout, read_rollout
from spindle.persistence.store import ThreadStoreError
from spindle.protocol.events import (
    AgentMessageDeltaEvent,
    ErrorEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    ThreadRolledBackEvent,
)
from spindle.protocol.items import Message, TextInput
from spindle.protocol.ops import ThreadRollbackOp, UserInputOp, UserTurnOp
from spindle.protocol.rollout import SessionMeta, TurnContextItem
from spindle.protocol.settings import SettingsUpdate

from .helpers import collect_until

REFERENCE = Path(__file__).parent / "fixtures" / "codex-0.169-rollouts"
"""Rollouts the real Codex 0.169 wrote, kept verbatim."""


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def home_of(rt: ThreadManager) -> Path:
    return rt.home


async def test_fresh_thread_writes_nothing_until_its_first_turn(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    home = home_of(runtime)
    assert thread.session_configured.rollout_path == str(thread.rollout_path)
    assert not thread.rollout_path.exists()
    assert find_thread_path_by_id(home, thread.thread_id) is None
    assert await runtime.store.find_path(thread.thread_id) is None
    assert (await runtime.list_threads()).entries == []
    await thread.ask("first")
    await thread.rollout.flush()
    assert find_thread_path_by_id(home, thread.thread_id) == thread.rollout_path
    assert thread.rollout_path.parent.parent.parent.parent == home / "sessions"


async def test_first_lines_are_meta_then_context_then_turn_context_then_the_turn(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    await thread.ask("hello")
    await thread.rollout.flush()
    rows = lines(thread.rollout_path)
    assert [r["type"] for r in rows[:3]] == ["session_meta", "response_item", "turn_context"]
    assert rows[0]["payload"]["id"] == thread.thread_id
    assert rows[1]["payload"]["content"][0]["text"].startswith("<environment_context>")
    assert [r["payload"].get("type") for r in rows[3:5]] == ["task_started", "message"]
    assert list(rows[0]) == ["timestamp", "ordinal", "type", "payload"]
    assert [r["ordinal"] for r in rows] == list(range(len(rows)))
    types = {r["payload"].get("type") for r in rows if r["type"] == "event_msg"}
    assert "agent_message_delta" not in types and "task_complete" in types


async def test_first_turn_overrides_are_in_the_initial_context(runtime: ThreadManager, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    thread = await runtime.start_thread()
    with thread.events() as events:
        await thread.submit(UserTurnOp(items=[TextInput(text="hi")], settings=SettingsUpdate(cwd=str(other))))
        await collect_until(events, TaskCompleteEvent)
    await thread.rollout.flush()
    rows = lines(thread.rollout_path)
    assert f"<cwd>{other}</cwd>" in rows[1]["payload"]["content"][0]["text"]
    assert rows[2]["payload"]["cwd"] == str(other)


async def test_create_failure_keeps_pending_and_the_next_turn_retries(runtime: ThreadManager, tmp_path: Path) -> None:
    home = home_of(runtime)
    (home / "sessions").write_text("a file where the sessions directory should be")
    thread = await runtime.start_thread()
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="one")]))
        seen = await collect_until(events, ErrorEvent)
    assert seen[-1].msg.message.startswith("failed to initialize rollout recorder: ")  # type: ignore[union-attr]
    assert not any(isinstance(ev.msg, TaskStartedEvent) for ev in seen)  # the turn did not run
    (home / "sessions").unlink()
    assert await thread.ask("two") == "echo: two"
    await thread.rollout.flush()
    rows = lines(thread.rollout_path)
    assert rows[0]["type"] == "session_meta"
    user_texts = [r["payload"]["content"][0]["text"] for r in rows if r["type"] == "response_item" and r["payload"].get("role") == "user"]
    assert user_texts[1:] == ["two"]


async def test_ephemeral_threads_never_touch_disk(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread(ephemeral=True)
    await thread.ask("hi")
    assert thread.session_configured.rollout_path is None
    assert not (home_of(runtime) / "sessions").exists()


async def test_resume_in_a_new_runtime_rebuilds_history(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        await thread.ask("one")
        await thread.ask("two")
        tid, history = thread.thread_id, list(thread.history)
    async with make_runtime() as rt:
        resumed = await rt.resume_thread(tid)
        assert resumed.thread_id == tid and resumed.history == history
        assert await rt.resume_thread(tid) is resumed  # already running: the same one
        with pytest.raises(ThreadStoreError, match="already running"):
            await rt.resume_thread(tid, path=str(rt.home / "sessions" / "other.jsonl"))
        await resumed.ask("three")
        assert [m["role"] for m in mock_model.requests[-1].json()["input"][1:]] == ["user", "assistant"] * 2 + ["user"]
        await resumed.rollout.flush()
        rows = lines(resumed.rollout_path)
        assert sum(1 for r in rows if r["type"] == "session_meta") == 1  # appended, not rewritten
        assert [r["ordinal"] for r in rows] == list(range(len(rows)))


async def test_a_thread_whose_cwd_is_gone_resumes_in_the_default_cwd(
    make_runtime: Callable[..., Any], tmp_path: Path
) -> None:
    gone = tmp_path / "project"
    gone.mkdir()
    async with make_runtime() as rt:
        thread = await rt.start_thread(SettingsUpdate(cwd=str(gone)))
        await thread.ask("one")
        tid, history = thread.thread_id, list(thread.history)
    gone.rmdir()
    async with make_runtime() as rt:
        resumed = await rt.resume_thread(tid)
        assert resumed.settings.cwd == str(tmp_path) and resumed.history == history
        assert await resumed.ask("two") == "echo: two"


async def test_resume_by_path_outside_home_is_refused(runtime: ThreadManager, tmp_path: Path) -> None:
    with pytest.raises(ThreadStoreError, match="outside"):
        await runtime.resume_thread(path=str(tmp_path / "elsewhere.jsonl"))
    with pytest.raises(ValueError, match="invalid thread id"):
        await runtime.resume_thread("../../etc/passwd")
    with pytest.raises(ValueError, match="invalid thread id"):
        await runtime.archive_thread("../../etc/passwd")


async def test_resume_reference_codex_rollouts(runtime: ThreadManager, mock_model: MockModel) -> None:
    target = runtime.home / "sessions"
    shutil.copytree(REFERENCE / "sessions", target)
    for path in sorted(target.rglob("*.jsonl")):
        read = read_rollout(path)
        assert read.torn is False
        history = rebuild_history(read.source.items())
        assert any(isinstance(i, Message) and i.role == "assistant" for i in history)
    live = "01a1fc97-d4ab-71d2-aa31-10d750c39aac"
    with capture_logs() as logs:  # recorded with a provider this config lacks: the default serves it
        thread = await runtime.resume_thread(live, SettingsUpdate(cwd=str(runtime.home)))
    assert [e["provider"] for e in logs if e["event"].startswith("the rollout's model provider")] == ["mock_provider"]
    assert thread.history and thread.settings.model == "mock-model" and thread.settings.provider_id == "mock"
    assert await thread.ask("continue") == "echo: continue"


async def test_spindle_rollout_passes_the_reference_shape(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    await thread.ask("hello")
    await thread.rollout.flush()
    allowed = {"session_meta", "response_item", "event_msg", "turn_context", "compacted"}
    for row in lines(thread.rollout_path):
        assert list(row)[:2] == ["timestamp", "ordinal"] and row["type"] in allowed
        assert row["timestamp"].endswith("Z") and len(row["timestamp"]) == 24
        assert isinstance(row["payload"], dict)
    meta = lines(thread.rollout_path)[0]["payload"]
    for key in ("id", "timestamp", "cwd", "originator", "cli_version", "source", "model_provider", "base_instructions"):
        assert key in meta


def test_torn_last_line_is_ignored_and_truncated_before_append(tmp_path: Path) -> None:
    good = b'{"timestamp":"t","type":"session_meta","payload":{"id":"01a1fc97-d4ab-71d2-aa31-10d750c39aac","timestamp":"t","cwd":"/"}}\n'
    bad = b'this is not json\n'
    torn = b'{"timestamp":"t","type":"response_it'
    items, skipped, is_torn, good_size = parse_rollout(good + bad + torn)
    assert [type(i) for i in items] == [SessionMeta] and skipped == 1 and is_torn and good_size == len(good + bad)


async def test_resume_after_a_crash_mid_write(make_runtime: Callable[..., Any]) -> None:
    async with make_runtime() as rt:
        thread = await rt.start_thread()
        await thread.ask("before the crash")
        tid, path = thread.thread_id, thread.rollout_path
    with path.open("ab") as f:
        f.write(b'{"timestamp":"2026-11-21T00:00:00.000Z","type":"response_item","payload":{"type":"mes')
    async with make_runtime() as rt:
        resumed = await rt.resume_thread(tid)
        await resumed.ask("after")
        await resumed.rollout.flush()
    for raw in path.read_bytes().splitlines():
        json.loads(raw)  # every line whole again


async def test_fork_truncate_and_interrupted_at_a_boundary(runtime: ThreadManager) -> None:
    thread = await runtime.start_thread()
    await thread.ask("one")
    await thread.ask("two")
    first = await runtime.fork_thread(ForkSnapshot.truncate_before(1), thread.thread_id)
    assert first.thread_id != thread.thread_id
    assert [i.text() for i in first.history if isinstance(i, Message)][1:] == ["one", "echo: one"]
    whole = await runtime.fork_thread(ForkSnapshot.interrupted(), thread.thread_id)
    assert whole.history == thread.history
    rows = lines(whole.rollout_path)  # a fork is written at once
    assert rows[0]["payload"]["forked_from_id"] == thread.thread_id
    assert not any(r["payload"].get("type") == "turn_aborted" for r in rows)
    assert await first.ask("three") == "echo: three"


async def test_fork_mid_turn(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()
    await thread.ask("done turn")
    gate = trio.Event()
    mock_model.script(Text(text="unfinished", gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="in flight")]))
        await collect_until(events, AgentMessageDeltaEvent)
        cut = await runtime.fork_thread(ForkSnapshot.truncate_before(99), thread.thread_id)
        marked = await runtime.fork_thread(ForkSnapshot.interrupted(), thread.thread_id)
    gate.set()
    cut_texts = [i.text() for i in cut.history if isinstance(i, Message)][1:]
    assert cut_texts == ["done turn", "echo: done turn"]  # the unfinished turn is cut
    marked_rows = lines(marked.rollout_path)
    assert "in flight" in json.dumps(marked_rows)
    assert marked_rows[-1]["payload"]["type"] == "turn_aborted"
    assert "<turn_aborted>" in marked_rows[-2]["payload"]["content"][0]["text"]


def test_fork_items_out_of_range_at_boundary_copies_everything() -> None:
    items = [TurnContextItem(cwd="/", approval_policy="never", model="m"), TaskStartedEvent(turn_id="t"),
             Message(role="user", content=[]), TaskCompleteEvent(turn_id="t")]
    assert fork_items(items, ForkSnapshot.truncate_before(5)) == items
    assert fork_items(items, ForkSnapshot.truncate_before(0)) == []


async def test_rollback_rules(runtime: ThreadManager, mock_model: MockModel) -> None:
    thread = await runtime.start_thread()

    async def rollback(n: int) -> Any:
        with thread.events() as events:
            await thread.submit(ThreadRollbackOp(num_turns=n))
            return (await collect_until(events, lambda ev: isinstance(ev.msg, ErrorEvent | ThreadRolledBackEvent)))[-1].msg

    assert (await rollback(0)).message == "num_turns must be >= 1"
    assert (await rollback(1)).message == "thread rollback requires persisted thread history"
    await thread.ask("one")
    await thread.ask("two")
    gate = trio.Event()
    mock_model.script(Text(text="slow", gate=gate), thread_id=thread.thread_id)
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="three")]))
        await collect_until(events, AgentMessageDeltaEvent)
        assert (await rollback(1)).message == "Cannot rollback while a turn is in progress."
        gate.set()
        await collect_until(events, TaskCompleteEvent)
    done = await rollback(2)
    assert done == ThreadRolledBackEvent(num_turns=2)
    assert [i.text() for i in thread.history if isinstance(i, Message)][1:] == ["one", "echo: one"]
    await thread.rollout.flush()
    resumed_history = rebuild_history(read_rollout(thread.rollout_path).source.items())
    assert resumed_history == thread.history  # the marker is persisted and replayed


async def test_archive_round_trip_and_error_before_materialization(runtime: ThreadManager) -> None:
    fresh = await runtime.start_thread()
    with pytest.raises(ThreadStoreError, match=f"no rollout found for thread id {fresh.thread_id}"):
        await runtime.archive_thread(fresh.thread_id)
    thread = await runtime.start_thread()
    await thread.ask("keep me")
    live = thread.rollout_path
    archived = await runtime.archive_thread(thread.thread_id)
    assert archived == runtime.home / "archived_sessions" / live.name and not live.exists()
    assert thread.is_closed and thread.thread_id not in runtime.list_thread_ids()
    assert [e.id for e in (await runtime.list_threads(archived=True)).entries] == [thread.thread_id]
    assert (await runtime.list_threads()).entries == []
    back = await runtime.unarchive_thread(thread.thread_id)
    assert back == live and live.exists()
    [entry] = (await runtime.list_threads()).entries
    assert entry.id == thread.thread_id and entry.preview == "keep me" and not entry.archived
    resumed = await runtime.resume_thread(thread.thread_id)
    assert await resumed.ask("back again") == "echo: back again"


async def test_listing_pages_by_update_time_and_the_index_rebuilds(runtime: ThreadManager) -> None:
    ids = []
    for n in range(5):
        thread = await runtime.start_thread()
        await thread.ask(f"thread {n}")
        ids.append(thread.thread_id)
    page = await runtime.list_threads(limit=2)
    seen = [e.id for e in page.entries]
    while page.next_cursor:
        page = await runtime.list_threads(limit=2, cursor=page.next_cursor)
        seen += [e.id for e in page.entries]
    assert seen == ids[::-1]
    assert await runtime.store.rebuild_index() == 5
    assert {e.id for e in (await runtime.list_threads(limit=10)).entries} == set(ids)
    with pytest.raises(ThreadStoreError, match="invalid cursor"):
        await runtime.list_threads(cursor="garbage")


async def test_write_failure_is_an_error_and_nothing_is_lost_or_doubled(runtime: ThreadManager, monkeypatch: pytest.MonkeyPatch) -> None:
    import os as real_os

    from spindle.persistence import writer

    thread = await runtime.start_thread()
    await thread.ask("one")
    await thread.rollout.flush()
    failing = {"on": True}
    real_write = real_os.write

    def flaky_write(fd: int, data: bytes) -> int:
        if failing["on"]:
            real_write(fd, data[: len(data) // 2])  # a partial line reaches the disk ...
            raise OSError(28, "No space left on device")  # ... and then the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(writer.os, "write", flaky_write)
    with thread.events() as events:
        await thread.submit(UserInputOp(items=[TextInput(text="two")]))
        seen = await collect_until(events, TaskCompleteEvent)
    assert any(isinstance(ev.msg, ErrorEvent) and "No space left" in ev.msg.message for ev in seen)
    failing["on"] = False
    await thread.rollout.flush()
    rows = lines(thread.rollout_path)
    texts = [r["payload"]["content"][0]["text"] for r in rows if r["type"] == "response_item"]
    assert texts.count("two") == 1 and texts.count("echo: two") == 1
    assert [r["ordinal"] for r in rows] == list(range(len(rows)))


def test_a_fork_of_a_turn_cut_short_leaves_no_call_without_an_output() -> None:
    from spindle.protocol.items import FunctionCall, FunctionCallOutput, InputText

    body = [TaskStartedEvent(turn_id="t1"), Message(role="user", content=[InputText(text="go")]),
            FunctionCall(call_id="c1", name="exec_command", arguments="{}"),
            FunctionCallOutput(call_id="c1", output="ok"),
            FunctionCall(call_id="c2", name="exec_command", arguments="{}")]
    history = rebuild_history(fork_items(body, ForkSnapshot.interrupted()))  # type: ignore[arg-type]
    outputs = [(item.call_id, item.output) for item in history if isinstance(item, FunctionCallOutput)]
    assert outputs == [("c1", "ok"), ("c2", "aborted")]


def test_a_threads_config_layer_is_written_without_its_secrets() -> None:
    from spindle.persistence.policy import REDACTED, without_secrets

    layer = {
        "mcp_servers.tui": {"url": "http://127.0.0.1:9/mcp", "http_headers": {"Authorization": "Bearer s3cret"},
                            "env_http_headers": {"X-Key": "TUI_KEY_VAR"}},
        "mcp_servers.other.http_headers.Cookie": "c00kie",
        "model_providers.p.experimental_bearer_token": "t0ken",
        "model": "gpt-5",
    }
    kept = without_secrets(layer)
    assert kept["mcp_servers.tui"] == {"url": "http://127.0.0.1:9/mcp", "http_headers": {"Authorization": REDACTED},
                                       "env_http_headers": {"X-Key": "TUI_KEY_VAR"}}
    assert kept["mcp_servers.other.http_headers.Cookie"] == REDACTED
    assert kept["model_providers.p.experimental_bearer_token"] == REDACTED
    assert kept["model"] == "gpt-5"


async def test_the_rollout_keeps_no_secret_of_a_threads_config(runtime: ThreadManager) -> None:
    config = {"mcp_servers.tui": {"url": "http://127.0.0.1:9/mcp", "enabled": False,
                                  "http_headers": {"Authorization": "Bearer s3cret"}}}
    thread = await runtime.start_thread(config=config)
    assert await thread.ask("hi") == "echo: hi"
    await thread.rollout.flush()
    assert "s3cret" not in Path(thread.rollout_path).read_text()
