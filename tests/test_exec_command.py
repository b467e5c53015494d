"""The `exec_command` tool: its schema, its output shape, its policy, its items and deltas."""

from __future__ import annotations

import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from spindle.actors.runtime.exec_command import REJECTED_BY_USER, ExecCommandTool
from spindle.actors.runtime.tools import ToolArgumentError, ToolContext
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient
from spindle.persistence.policy import should_persist_event
from spindle.protocol.events import (
    ApprovalRequestEvent,
    Event,
    ExecCommandOutputDeltaEvent,
    is_lifecycle,
)
from spindle.protocol.items import CommandExecutionItem, TurnItem
from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import ApprovalPolicy, ReviewDecision, ThreadSettings

from .sandbox_helpers import needs_bwrap, workspace

CODEX_TOOL = Path(__file__).parent / "fixtures" / "codex-0.169-exec-command-tool.json"
"""The `exec_command` entry of the `tools` of a request Codex 0.169 sent (a captured request)."""
HEADER = re.compile(
    r"Chunk ID: [0-9a-f]{6}\nWall time: \d+\.\d{4} seconds\n(?P<timeout>Process timed out[^\n]*\n)?"
    r"Process exited with code (?P<code>-?\d+)\nOriginal token count: (?P<tokens>\d+)\nOutput:\n"
)


class Recorder:
    """A ToolContext's callbacks, recorded."""

    def __init__(self, cwd: Path, *, sandbox: SandboxSpec, approval: ApprovalPolicy = "never") -> None:
        self.started: list[CommandExecutionItem] = []
        self.completed: list[CommandExecutionItem] = []
        self.deltas: list[tuple[str, str]] = []
        self.asked: list[ApprovalRequestEvent] = []
        self.decision: ReviewDecision = "denied"
        settings = ThreadSettings(model="m", provider_id="p", cwd=str(cwd), approval_policy=approval,
                                  sandbox_mode="workspace-write", instructions="")
        self.ctx = ToolContext(
            thread_id=f"t-{cwd.name}", turn_id="turn", call_id="call_1", settings=settings, sandbox=sandbox,
            item_started=self._started, item_completed=self._completed, ask_approval=self._ask,
            output_delta=lambda item_id, delta: self.deltas.append((item_id, delta)),
        )

    async def _ask(self, request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        self.asked.append(request)
        return self.decision

    def _started(self, item: TurnItem) -> None:
        assert isinstance(item, CommandExecutionItem)
        self.started.append(item)

    def _completed(self, item: TurnItem) -> None:
        assert isinstance(item, CommandExecutionItem)
        self.completed.append(item)


FULL = SandboxSpec(full_access=True, network=True)


async def run(rec: Recorder, tool: ExecCommandTool | None = None, **args: Any) -> str:
    return await (tool or ExecCommandTool()).run(json.dumps(args), rec.ctx)


def test_the_tool_is_offered_as_codex_offers_it() -> None:
    assert ExecCommandTool().spec() == json.loads(CODEX_TOOL.read_text())


async def test_output_has_codex_header_lines_then_the_output(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=FULL)
    output = await run(rec, cmd="echo hi; echo err >&2; exit 2")
    match = HEADER.match(output)
    assert match is not None, output
    assert match["code"] == "2" and match["tokens"] == "2"
    assert output[match.end():] == "hi\nerr\n"
    (started,), (done,) = rec.started, rec.completed
    assert started.status == "inProgress" and started.process_id is not None and started.source == "unifiedExecStartup"
    assert re.fullmatch(r"/\S*/bash -lc 'echo hi; echo err >&2; exit 2'", started.command), started.command
    assert started.actions == ["echo hi; echo err >&2; exit 2"] and started.cwd == str(tmp_path)
    assert (done.status, done.exit_code, done.aggregated_output) == ("failed", 2, "hi\nerr\n")
    assert isinstance(done.duration_ms, int)
    assert "".join(d for _, d in rec.deltas) == "hi\nerr\n" and {i for i, _ in rec.deltas} == {"call_1"}


async def test_max_output_tokens_bounds_what_the_model_reads(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=FULL)
    output = await run(rec, cmd="head -c 20000 /dev/zero | tr '\\0' x; echo; echo tail-end", max_output_tokens=100)
    match = HEADER.match(output)
    assert match is not None and match["tokens"] == str(-(-20010 // 4))
    body = output[match.end():]
    assert len(body) < 100 * 4 + 60 and "tokens truncated" in body and body.endswith("tail-end\n")
    assert rec.completed[0].aggregated_output is not None and len(rec.completed[0].aggregated_output) == 20010


async def test_shell_login_and_workdir_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    rec = Recorder(tmp_path, sandbox=FULL)
    output = await run(rec, cmd="echo $0; pwd", shell="sh", login=False, workdir="sub")
    assert output.endswith(f"sh\n{tmp_path / 'sub'}\n") or output.endswith(f"/sh\n{tmp_path / 'sub'}\n")
    assert re.fullmatch(r"\S*sh -c 'echo \$0; pwd'", rec.started[0].command)
    assert rec.started[0].cwd == str(tmp_path / "sub")


async def test_bad_arguments_are_refused_before_anything_runs(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=FULL)
    with pytest.raises(ToolArgumentError, match="workdir .*missing.* is not an existing folder"):
        await run(rec, cmd="touch x", workdir="missing")
    with pytest.raises(ToolArgumentError, match="shell 'no-such-shell' was not found"):
        await run(rec, cmd="touch x", shell="no-such-shell")
    with pytest.raises(ToolArgumentError, match="unknown field `command`"):
        await run(rec, command=["touch", "x"])
    assert not (tmp_path / "x").exists() and rec.started == []


async def test_escalation_is_refused_under_never_and_asked_otherwise(tmp_path: Path) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    escalated = {"cmd": f"touch {outside / 'x'}", "sandbox_permissions": "require_escalated", "justification": "please"}
    never = Recorder(ws, sandbox=workspace(str(ws)), approval="never")
    assert (await run(never, **escalated)).startswith('exec_command refused: approval_policy "never" lets no command leave')
    assert never.asked == [] and [i.status for i in never.completed] == ["declined"]
    asking = Recorder(ws, sandbox=workspace(str(ws)), approval="on-request")
    assert await run(asking, **escalated) == REJECTED_BY_USER
    assert not (outside / "x").exists() and [i.status for i in asking.completed] == ["declined"]
    (request,) = asking.asked
    assert (request.reason, request.command[-1], request.cwd) == ("please", f"touch {outside / 'x'}", str(ws))
    asking.decision = "approved"
    assert "Process exited with code 0" in await run(asking, **escalated)
    assert (outside / "x").exists()  # approved: it ran outside the sandbox
    # with full access there is nothing to escalate from: it runs, unasked
    full = Recorder(ws, sandbox=FULL, approval="on-request")
    assert "Process exited with code 0" in await run(full, cmd="touch y", sandbox_permissions="require_escalated")
    assert (ws / "y").exists() and full.asked == []


@needs_bwrap
async def test_untrusted_asks_before_any_command_that_is_not_known_safe(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    rec = Recorder(tmp_path, sandbox=workspace(str(tmp_path)), approval="untrusted")
    assert "Process exited with code 0" in await run(rec, cmd="ls && git status | head -3")
    assert rec.asked == []
    assert await run(rec, cmd="touch x") == REJECTED_BY_USER
    assert not (tmp_path / "x").exists() and len(rec.asked) == 1
    rec.decision = "approved"
    assert "Process exited with code 0" in await run(rec, cmd="touch x")
    assert (tmp_path / "x").exists()
    assert "Read-only file system" in await run(rec, cmd="touch .git/y")  # approved, yet still sandboxed


@needs_bwrap
async def test_on_failure_asks_to_run_again_outside_the_sandbox(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=workspace(str(tmp_path)), approval="on-failure")
    (tmp_path / ".git").mkdir(exist_ok=True)
    output = await run(rec, cmd="touch .git/hooked")
    assert "Read-only file system" in output and len(rec.asked) == 1 and not (tmp_path / ".git" / "hooked").exists()
    rec.decision = "approved"
    assert "Process exited with code 0" in await run(rec, cmd="touch .git/hooked")
    assert (tmp_path / ".git" / "hooked").exists()
    assert [i.status for i in rec.completed] == ["failed", "failed", "completed"]


async def test_a_command_that_outlives_its_timeout_is_killed(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=FULL)
    output = await run(rec, ExecCommandTool(timeout_s=0.5), cmd="echo begun; sleep 30; echo never")
    match = HEADER.match(output)
    assert match is not None and match["timeout"] and match["code"] == "124"
    assert output.endswith("begun\n")
    assert (rec.completed[0].status, rec.completed[0].exit_code) == ("failed", 124)


async def test_no_bwrap_refuses_a_sandboxed_command_with_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to("/bin/bash")
    monkeypatch.setenv("PATH", str(bin_dir))
    rec = Recorder(tmp_path, sandbox=workspace(str(tmp_path)))
    output = await run(rec, cmd=f"touch {tmp_path / 'ran'}")
    assert output.startswith("exec_command failed: the sandbox is unavailable: no `bwrap` on PATH")
    assert "apt-get install bubblewrap" in output
    assert not (tmp_path / "ran").exists()
    assert rec.completed[0].status == "failed" and "apt-get install bubblewrap" in (rec.completed[0].aggregated_output or "")


@needs_bwrap
async def test_a_sandboxed_command_writes_its_workspace_only(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=workspace(str(tmp_path)))
    output = await run(rec, cmd="echo ok > mine.txt; touch /etc/spindle-test-escape; echo $CODEX_SANDBOX_NETWORK_DISABLED")
    assert (tmp_path / "mine.txt").read_text() == "ok\n"
    assert not Path("/etc/spindle-test-escape").exists()
    assert "Read-only file system" in output and output.endswith("1\n")


# --- through the app-server -------------------------------------------------------


@needs_bwrap
async def test_a_turn_streams_a_command_execution_item_and_its_output(
    client: RpcClient, mock_model: MockModel, tmp_path: Path
) -> None:
    thread = (await client.call("thread/start", {"cwd": str(tmp_path), "sandbox": "workspace-write"}))["thread"]
    mock_model.script(
        # login=false: a login shell's profile may print warnings of its own (pyenv cannot rehash read-only)
        Call(name="exec_command", arguments={"cmd": "echo hi; echo err >&2; echo made > f.txt", "login": False},
             call_id="call_x"),
        Text(text="done"),
        thread_id=thread["id"],
    )
    mark = len(client.notifications)
    turn = await client.run_turn(thread["id"], "run it")
    assert turn["status"] == "completed"
    notes = [n for n in client.notifications[mark:] if n["method"].startswith("item/")]
    commands = [n for n in notes if n["params"].get("item", {}).get("type") == "commandExecution"
                or n["method"] == "item/commandExecution/outputDelta"]
    methods = [n["method"] for n in commands]
    assert methods[0] == "item/started" and methods[-1] == "item/completed"
    assert set(methods[1:-1]) == {"item/commandExecution/outputDelta"}
    started, completed = commands[0]["params"]["item"], commands[-1]["params"]["item"]
    assert started["id"] == "call_x" and started["status"] == "inProgress" and started["processId"]
    assert started["source"] == "unifiedExecStartup" and started["cwd"] == str(tmp_path)
    assert started["commandActions"] == [{"type": "unknown", "command": "echo hi; echo err >&2; echo made > f.txt"}]
    deltas = [n["params"] for n in commands[1:-1]]
    assert all(d["threadId"] == thread["id"] and d["turnId"] == turn["id"] and d["itemId"] == "call_x" for d in deltas)
    assert "".join(d["delta"] for d in deltas) == "hi\nerr\n"
    assert completed["status"] == "completed" and completed["exitCode"] == 0
    assert completed["aggregatedOutput"] == "hi\nerr\n" and isinstance(completed["durationMs"], int)
    assert (tmp_path / "f.txt").read_text() == "made\n"


def test_output_deltas_are_lossy_and_live_only() -> None:
    """A lagging subscriber may lose them (like message deltas), and rollouts never hold them."""
    delta = ExecCommandOutputDeltaEvent(item_id="call_1", delta="hi\n")
    assert not is_lifecycle(Event(id="sub", msg=delta))
    assert not should_persist_event(delta)


async def test_secrets_in_the_servers_environment_do_not_reach_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-hidden-1")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-hidden-2")
    monkeypatch.setenv("MY_SETTING", "visible")
    output = await run(Recorder(tmp_path, sandbox=FULL), cmd="env")
    assert "MY_SETTING=visible" in output and "hidden-" not in output
