"""One CODEX_HOME shared with the real Codex: each reads what the other wrote.

`codex_view` applies the rules Codex 0.171's readers were observed to apply to a rollout (driving
the real `codex app-server` over stdio, changing one line at a time):
- the first line is `session_meta` with `id`, `timestamp`, `cwd`, `originator` and `cli_version`,
  else the file "does not start with session metadata" and is neither listed nor read;
- `thread/list` shows it by default only under `sessions/**/rollout-*.jsonl`, with `source` "vscode"
  or "cli", and once it holds a user message (`user_message` or an `item_completed` UserMessage);
- without `history_mode: "paginated"`, turns are rebuilt from `task_started` (the turn id) and the
  `user_message` / `agent_message` events alone: a user input with no `user_message` is invisible.

The last tests drive the real Codex binary when `SPINDLE_CODEX_BIN` names one (`npm install
@openai/codex@0.171.0`; the binary is under node_modules/@openai/codex-linux-x64/vendor/).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.appserver.turns import build_turns
from spindle.actors.runtime import open_runtime
from spindle.actors.runtime.errors import TurnError
from spindle.actors.testing.mock_model import HttpError, MockModel
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, write_config
from spindle.persistence.lease import WriterLeaseHeldError
from spindle.protocol.config import Config
from spindle.protocol.events import TaskCompleteEvent
from spindle.protocol.items import TextInput
from spindle.protocol.ops import UserInputOp

from .helpers import collect_until

FIXTURES = Path(__file__).parent / "fixtures" / "codex-0.171-rollouts"
CODEX_BIN = os.environ.get("SPINDLE_CODEX_BIN")
REQUIRED_META = ("id", "timestamp", "cwd", "originator", "cli_version")
INTERACTIVE_SOURCES = ("vscode", "cli")


@dataclass
class CodexTurn:
    id: str
    user: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)


@dataclass
class CodexView:
    listed: bool
    turns: list[CodexTurn]


def codex_view(home: Path, path: Path) -> CodexView:
    """What Codex 0.171 makes of the rollout at `path` (see the module docstring)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = lines[0]
    meta = first.get("payload", {})
    if first.get("type") != "session_meta" or not all(isinstance(meta.get(key), str) for key in REQUIRED_META):
        raise AssertionError(f"Codex: rollout at {path} does not start with session metadata")
    events = [line["payload"] for line in lines if line["type"] == "event_msg"]
    has_user = any(
        e["type"] == "user_message" or (e["type"] == "item_completed" and e["item"]["type"] == "UserMessage")
        for e in events
    )
    under_sessions = path.parent.parent.parent.parent == home / "sessions" and path.name.startswith("rollout-")
    listed = under_sessions and meta.get("source", "vscode") in INTERACTIVE_SOURCES and has_user
    assert meta.get("history_mode", "legacy") == "legacy", "a paginated rollout is read from Codex's own database"
    turns: list[CodexTurn] = []
    for e in events:
        if e["type"] == "task_started":
            turns.append(CodexTurn(e["turn_id"]))
        elif e["type"] == "user_message" and turns:
            turns[-1].user.append(e["message"])
        elif e["type"] == "agent_message" and turns:
            turns[-1].agent.append(e["message"])
    return CodexView(listed, turns)


async def test_codex_sees_every_user_turn_of_a_spindle_thread(make_config: Callable[..., Config], mock_model: MockModel) -> None:
    config = make_config()
    home = Path(config.codex_home)
    async with open_runtime(config) as rt:
        thread = await rt.start_thread()
        await thread.ask("first question")
        with thread.events() as events:
            await thread.submit(UserInputOp(items=[TextInput(text="two"), TextInput(text="parts")]))
            await collect_until(events, TaskCompleteEvent)
        await thread.ask("third")
        mock_model.script(HttpError(status=400, message="bad request"))
        with pytest.raises(TurnError):
            await thread.ask("a turn that fails")
        await thread.rollout.flush()
        spindle_turns = build_turns(thread.rollout.source.iter_forward_from(0))

    view = codex_view(home, thread.rollout_path)
    assert view.listed
    assert [t.id for t in view.turns] == [t.id for t in spindle_turns]
    assert [t.user for t in view.turns] == [["first question"], ["two\nparts"], ["third"], ["a turn that fails"]]
    assert view.turns[0].agent == ["echo: first question"]


async def test_a_spindle_thread_without_user_message_events_would_be_invisible(tmp_path: Path) -> None:
    """The check above can fail: drop the `user_message` lines and Codex sees no user turn."""
    home = tmp_path / "home"
    day = home / "sessions" / "2026" / "12" / "01"
    day.mkdir(parents=True)
    source = next((FIXTURES / "sessions").glob("*/*/*/rollout-*-01a23027-e24e-*.jsonl"))
    stripped = day / source.name
    stripped.write_text("".join(line + "\n" for line in source.read_text().splitlines() if '"type":"user_message"' not in line))
    view = codex_view(home, stripped)
    assert len(view.turns) == 3 and all(turn.user == [] for turn in view.turns)


def codex_home_with_fixtures(tmp_path: Path, mock: MockModel) -> Path:
    home = tmp_path / "home"
    shutil.copytree(FIXTURES / "sessions", home / "sessions")
    write_config(home, mock)
    return home


async def test_spindle_reads_and_resumes_what_codex_wrote(tmp_path: Path, mock_model: MockModel, nursery: trio.Nursery) -> None:
    from spindle.actors.appserver import AppServer
    from spindle.actors.runtime.config import load_config
    from spindle.actors.testing.rpc_client import in_memory

    home = codex_home_with_fixtures(tmp_path, mock_model)
    async with open_runtime(load_config(home=home)) as manager:
        server: AppServer = await nursery.start(AppServer(manager, unload_delay=0).run)
        async with in_memory(server) as client:
            await client.initialize()
            paginated = await client.call("thread/read", {"threadId": "01a23027-be1a-77f3-8aab-1ee8d77cde0f", "includeTurns": True})
            assert [_user_texts(t) for t in paginated["thread"]["turns"]] == [["hello codex"], ["second message"]]
            appended = await client.call("thread/read", {"threadId": "01a23027-e24e-728d-93d4-6316e8418e5b", "includeTurns": True})
            turns = appended["thread"]["turns"]
            assert [_user_texts(t) for t in turns] == [["hello spindle"], ["second spindle message"], ["third from codex"]]
            assert turns[2]["id"] == "01a23029-5eb5-7042-9801-ffe178b3401a" and turns[2]["status"] == "completed"
            assert turns[2]["items"][1]["text"] == "echo: third from codex"

            await client.call("thread/resume", {"threadId": "01a23027-e24e-728d-93d4-6316e8418e5b"})
            turn = await client.run_turn("01a23027-e24e-728d-93d4-6316e8418e5b", "fourth from spindle")
            assert turn["status"] == "completed"
            resumed = await client.call("thread/resume", {"threadId": "01a23027-be1a-77f3-8aab-1ee8d77cde0f"})
            await client.run_turn(resumed["thread"]["id"], "spindle goes on")
            await client.call("thread/unsubscribe", {"threadId": resumed["thread"]["id"]})
            await client.wait_for("thread/closed")
        server.stop()
    for path in (home / "sessions").glob("*/*/*/rollout-*.jsonl"):
        ordinals = [line["ordinal"] for line in map(json.loads, path.read_text().splitlines()) if "ordinal" in line]
        assert ordinals == sorted(set(ordinals)), f"an ordinal repeats or goes back in {path.name}"
    sent = next(r for r in mock_model.requests if r.last_user_text() == "fourth from spindle").json()["input"]
    said = [part["text"] for item in sent if item.get("role") == "user" for part in item["content"]]
    assert [text for text in said if not text.startswith("<")] == [
        "hello spindle", "second spindle message", "third from codex", "fourth from spindle"]


def _user_texts(turn: dict[str, Any]) -> list[str]:
    return ["".join(part["text"] for part in item["content"]) for item in turn["items"] if item["type"] == "userMessage"]


# --- the real Codex -----------------------------------------------------------

needs_codex = pytest.mark.skipif(CODEX_BIN is None, reason="set SPINDLE_CODEX_BIN to a codex 0.171 binary")


@asynccontextmanager
async def codex_app_server(home: Path) -> AsyncIterator[tuple[RpcClient, trio.Process]]:
    assert CODEX_BIN is not None
    env = {**os.environ, "CODEX_HOME": str(home), "RUST_LOG": "warn"}
    process = await trio.lowlevel.open_process([CODEX_BIN, "app-server"], stdin=-1, stdout=-1, stderr=-3, env=env, cwd=str(home))
    assert process.stdin is not None and process.stdout is not None
    client = RpcClient(process.stdin, process.stdout)
    client.timeout = 60
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_loop)
            await client.initialize(experimental=True)
            yield client, process
            await process.stdin.aclose()
            with trio.move_on_after(10):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()


@needs_codex
async def test_real_codex_lists_reads_and_forks_a_spindle_thread(tmp_path: Path, mock_model: MockModel) -> None:
    home = tmp_path / "home"
    write_config(home, mock_model)
    from spindle.actors.runtime.config import load_config

    async with open_runtime(load_config(home=home)) as rt:
        thread = await rt.start_thread()
        await thread.ask("spindle one")
        await thread.ask("spindle two")
        tid = thread.thread_id
        async with codex_app_server(home) as (codex, _):
            with pytest.raises(RpcFailure, match="active writer"):
                await codex.call("thread/resume", {"threadId": tid})
        await thread.shutdown_and_wait()

    async with codex_app_server(home) as (codex, process):
        listed = await codex.call("thread/list", {})
        assert tid in [t["id"] for t in listed["data"]]
        read = await codex.call("thread/read", {"threadId": tid, "includeTurns": True})
        assert [_user_texts(t) for t in read["thread"]["turns"]] == [["spindle one"], ["spindle two"]]
        fork = await codex.call("thread/fork", {"threadId": tid})
        assert [_user_texts(t) for t in fork["thread"]["turns"]] == [["spindle one"], ["spindle two"]]

        await codex.call("thread/resume", {"threadId": tid})
        async with open_runtime(load_config(home=home)) as rt:
            with pytest.raises(WriterLeaseHeldError, match=f"pid {process.pid}"):
                await rt.resume_thread(tid)


@needs_codex
async def test_real_codex_reads_a_spindle_thread_with_its_own_config_layer(tmp_path: Path, mock_model: MockModel) -> None:
    """Spindle's `session_meta.session_config` (a thread's own config map) is a field Codex's
    reader does not know: it must still list, read and resume the thread."""
    home = tmp_path / "home"
    write_config(home, mock_model)
    from spindle.actors.runtime.config import load_config

    async with open_runtime(load_config(home=home)) as rt:
        thread = await rt.start_thread(config={"model_context_window": 4096, "mcp_servers.docs.command": "true"})
        await thread.ask("with a layer")
        tid, path = thread.thread_id, thread.rollout_path
    assert '"session_config"' in path.read_text().splitlines()[0]
    async with codex_app_server(home) as (codex, _):
        assert tid in [t["id"] for t in (await codex.call("thread/list", {}))["data"]]
        read = await codex.call("thread/read", {"threadId": tid, "includeTurns": True})
        assert [_user_texts(t) for t in read["thread"]["turns"]] == [["with a layer"]]
        await codex.call("thread/resume", {"threadId": tid})


@needs_codex
async def test_real_codex_reads_a_spindle_thread_with_an_mcp_tool_call(tmp_path: Path, mock_model: MockModel) -> None:
    from spindle.actors.runtime.config import load_config
    from spindle.actors.testing.mock_model import Call, Text

    from .test_mcp import tiny

    home = tmp_path / "home"
    write_config(home, mock_model)
    async with open_runtime(load_config(home=home, extra={"mcp_servers": {"docs": tiny()}})) as rt:
        thread = await rt.start_thread()
        mock_model.script(Call(name="mcp__docs__add", arguments={"a": 1, "b": 2}), Text(text="three"),
                          thread_id=thread.thread_id)
        assert await thread.ask("add") == "three"
        await thread.ask("and then")
        tid = thread.thread_id
        await thread.shutdown_and_wait()
    lines = [json.loads(line) for line in thread.rollout_path.read_text().splitlines()]
    assert any(line["payload"].get("item", {}).get("type") == "McpToolCall" for line in lines if line["type"] == "event_msg")
    async with codex_app_server(home) as (codex, _):
        read = await codex.call("thread/read", {"threadId": tid, "includeTurns": True})
        assert [_user_texts(t) for t in read["thread"]["turns"]] == [["add"], ["and then"]]


@needs_codex
async def test_real_codex_reads_a_spindle_thread_with_approvals_profiles_and_dynamic_tools(
    tmp_path: Path, mock_model: MockModel
) -> None:
    """What issues 13 and 14 add to a rollout (a profile and runtime roots in `turn_context`,
    dynamic tools in `session_meta`, an approval request and its `approval_resolved`) must not stop Codex reading it."""
    from spindle.actors.runtime.config import load_config
    from spindle.actors.runtime.tools import ToolRegistry
    from spindle.actors.testing.mock_model import Call, Text
    from spindle.protocol.items import DynamicToolSpec

    from .test_approvals import AskingTool

    home = tmp_path / "home"
    write_config(home, mock_model)
    lookup = DynamicToolSpec(name="lookup", description="Look up.", input_schema={"type": "object"})
    async with open_runtime(load_config(home=home), tools=ToolRegistry([AskingTool()])) as rt:
        thread = await rt.start_thread(permissions=":workspace", runtime_workspace_roots=[str(tmp_path)],
                                       dynamic_tools=[lookup])
        mock_model.script(Call(name="ask", arguments="f"), Text(text="asked"), thread_id=thread.thread_id)

        async def for_session(request: Any) -> Any:
            return "approved_for_session"

        assert await thread.ask("ask me", approve=for_session) == "asked"
        tid = thread.thread_id
        await thread.shutdown_and_wait()
    text = thread.rollout_path.read_text()
    assert '"exec_approval_request"' in text  # a request is kept too (a restart asks it again)
    assert '"approval_resolved"' in text and '"spindle_dynamic_tools"' in text and '"runtime_workspace_roots"' in text
    async with codex_app_server(home) as (codex, _):
        assert tid in [t["id"] for t in (await codex.call("thread/list", {}))["data"]]
        read = await codex.call("thread/read", {"threadId": tid, "includeTurns": True})
        assert [_user_texts(t) for t in read["thread"]["turns"]] == [["ask me"]]
        await codex.call("thread/resume", {"threadId": tid})


@needs_codex
async def test_real_codex_reads_and_resumes_a_compacted_spindle_thread_with_a_shell_record(
    tmp_path: Path, mock_model: MockModel
) -> None:
    """What issue 15 adds to a rollout (a `compacted` line with its replacement history, Codex's
    `context_compacted`, a `<user_shell_command>` record, a memory-mode `session_meta` copy) must
    not stop Codex reading or resuming it."""
    from spindle.actors.runtime.config import load_config
    from spindle.actors.testing.mock_model import Text
    from spindle.protocol.ops import RunUserShellCommandOp, SetThreadMemoryModeOp

    home = tmp_path / "home"
    write_config(home, mock_model)
    async with open_runtime(load_config(home=home)) as rt:
        thread = await rt.start_thread()
        tid = thread.thread_id
        mock_model.script(Text(text="one"), Text(text="the summary"), Text(text="two"), thread_id=tid)
        assert await thread.ask("first") == "one"
        await thread.compact()
        with thread.events() as events:
            await thread.submit(RunUserShellCommandOp(command="echo from-the-user"))
            await collect_until(events, TaskCompleteEvent)
        assert await thread.ask("second") == "two"
        assert (await thread.submit_and_wait(SetThreadMemoryModeOp(mode="disabled"))).error is None
        await thread.shutdown_and_wait()
    text = thread.rollout_path.read_text()
    assert '"compacted"' in text and "<user_shell_command>" in text and '"memory_mode":"disabled"' in text
    async with codex_app_server(home) as (codex, _):
        read = await codex.call("thread/read", {"threadId": tid, "includeTurns": True})
        assert ["first"] in [_user_texts(t) for t in read["thread"]["turns"]]
        assert ["second"] in [_user_texts(t) for t in read["thread"]["turns"]]
        await codex.call("thread/resume", {"threadId": tid})


@needs_codex
async def test_real_codex_proxy_relays_a_turn_to_a_spindle_daemon(mock_model: MockModel) -> None:
    """`codex app-server proxy` (0.171) relays bytes to the control socket; its client speaks
    WebSocket through it. A Spindle server on that socket answers it as it answers Codex's own."""
    import tempfile

    from spindle.actors.appserver.listeners import serve
    from spindle.actors.runtime.config import load_config

    from .helpers import websocket_through

    assert CODEX_BIN is not None
    with tempfile.TemporaryDirectory(prefix="cxp-", dir="/tmp") as folder:  # short enough for the socket path
        home = Path(folder)
        write_config(home, mock_model)
        async with open_runtime(load_config(home=home)) as rt, trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve(rt, "unix://", task_status=task_status))
            env = {**os.environ, "CODEX_HOME": str(home), "RUST_LOG": "warn"}
            async with websocket_through([CODEX_BIN, "app-server", "proxy"], env) as (client, _):
                assert (await client.initialize())["userAgent"].startswith("spindle/0.171.0 ")
                thread = (await client.call("thread/start", {}))["thread"]
                assert (await client.run_turn(thread["id"], "through codex's proxy"))["status"] == "completed"
            nursery.cancel_scope.cancel()
