"""`exec_command`, Codex's command tool, with its schema: `cmd` runs through a shell (`bash -lc` by
default; `shell` and `login` choose), in `workdir` (default the turn's cwd), inside the sandbox
the turn realised (`ToolContext.sandbox`, see `sandbox.py`). Each run is a `CommandExecution`
item, started, streamed (`ExecCommandOutputDeltaEvent`), completed. The model gets Codex's
header lines and the output, cut to `max_output_tokens`. Whether it runs, asks the user first
(`ToolContext.ask_approval`, an `exec_approval_request`) or is refused is the approval policy's
call (`exec_policy.py`); a declined command is a `declined` item and the model reads Codex's
"rejected by user" text. Not implemented: `tty` (output comes
through pipes) and the `yield_time_ms` sessions of `write_stdin`; a command runs until it exits or
`EXEC_TIMEOUT_S` passes.
"""

from __future__ import annotations

import math
import os
import secrets
import shlex
from collections.abc import Hashable
from typing import Any, Literal

import msgspec
import structlog
import trio

from spindle.protocol.events import ExecApprovalRequestEvent
from spindle.protocol.items import CommandExecutionItem
from spindle.protocol.sandbox import SandboxSpec

from .approvals import InProcess
from .command_item import ItemEvents, command_env, end_unrun, find_shell, run_command_item
from .errors import SandboxUnavailable
from .exec_policy import decide, likely_sandbox_denial
from .execution import ExecResult
from .sandbox import plan
from .tools import ToolArgumentError, ToolContext

log = structlog.get_logger(__name__)

EXEC_TIMEOUT_S = 600.0
"""How long a command may run before its process group is killed (exit code 124)."""
DEFAULT_MAX_OUTPUT_TOKENS = 10_000
BYTES_PER_TOKEN = 4
"""The estimate Codex uses to turn a token budget into text."""


class ExecCommandArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cmd: str
    workdir: str | None = None
    shell: str | None = None
    login: bool = True
    tty: bool = False
    yield_time_ms: float | None = None
    max_output_tokens: float | None = None
    sandbox_permissions: Literal["use_default", "require_escalated"] = "use_default"
    justification: str | None = None
    prefix_rule: list[str] | None = None


_exec_args = msgspec.json.Decoder(ExecCommandArgs)

EXEC_COMMAND_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "cmd": {"type": "string", "description": "Shell command to execute."},
        "justification": {
            "type": "string",
            "description": "User-facing approval question for `require_escalated`; omit otherwise.",
        },
        "login": {
            "type": "boolean",
            "description": "True runs the shell with -l/-i semantics; false disables them. Defaults to true.",
        },
        "max_output_tokens": {
            "type": "number",
            "description": "Output token budget. Defaults to 10000 tokens; larger requests may be capped by policy.",
        },
        "prefix_rule": {
            "type": "array",
            "description": (
                "Reusable approval prefix for `cmd`, only with `sandbox_permissions: \"require_escalated\"`; "
                "for example [\"git\", \"pull\"]."
            ),
            "items": {"type": "string"},
        },
        "sandbox_permissions": {
            "type": "string",
            "description": (
                "Per-command sandbox override. Defaults to `use_default`; use `require_escalated` for "
                "unsandboxed execution."
            ),
            "enum": ["use_default", "require_escalated"],
        },
        "shell": {"type": "string", "description": "Shell binary to launch. Defaults to the user's default shell."},
        "tty": {
            "type": "boolean",
            "description": "True allocates a PTY for the command; false or omitted uses plain pipes.",
        },
        "workdir": {"type": "string", "description": "Working directory for the command. Defaults to the turn cwd."},
        "yield_time_ms": {
            "type": "number",
            "description": "Wait before yielding output. Defaults to 10000 ms; effective range is 250-30000 ms.",
        },
    },
    "required": ["cmd"],
    "additionalProperties": False,
}


class ExecCommandTool:
    """Codex's `exec_command`: a shell command, sandboxed, streamed, bounded."""

    name = "exec_command"

    def __init__(self, *, timeout_s: float = EXEC_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": "Runs a command in a PTY, returning output or a session ID for ongoing interaction.",
            "strict": False,
            "parameters": EXEC_COMMAND_PARAMETERS,
        }

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        try:
            args = _exec_args.decode(arguments or "{}")
        except msgspec.MsgspecError as exc:
            raise ToolArgumentError(str(exc)) from None
        if not args.cmd.strip():
            raise ToolArgumentError("cmd is empty")
        cwd, shell = await trio.to_thread.run_sync(_resolve, args, ctx.settings.cwd)
        argv = [shell, "-lc" if args.login else "-c", args.cmd]
        item = CommandExecutionItem(
            id=ctx.call_id, command=shlex.join(argv), cwd=cwd, status="inProgress",
            source="unifiedExecStartup", actions=[args.cmd],
        )
        if ctx.sandbox is None:
            return _ended(ctx, item, "failed", ctx.sandbox_error, f"exec_command failed: {ctx.sandbox_error}")
        policy = ctx.settings.approval_policy
        decision = decide(policy, ctx.sandbox, args.cmd, justification=args.justification, shell=args.shell or "bash",
                          escalate=args.sandbox_permissions == "require_escalated")
        if decision.verdict == "refuse":
            return _ended(ctx, item, "declined", None, f"exec_command refused: {decision.reason}")
        if decision.verdict == "ask" and not await _approved(ctx, argv, cwd, decision.reason, decision.escalate):
            return _ended(ctx, item, "declined", None, REJECTED_BY_USER)
        spec = UNSANDBOXED if decision.escalate else ctx.sandbox
        result = await self._execute(ctx, args, argv, cwd, item, spec)
        if (isinstance(result, ExecResult) and policy == "on-failure" and not spec.full_access
                and likely_sandbox_denial(result.exit_code, result.output.text())
                and await _approved(ctx, argv, cwd, RETRY_QUESTION, escalate=True, retry=True)):
            result = await self._execute(ctx, args, argv, cwd, item, UNSANDBOXED)
        return result if isinstance(result, str) else model_output(result, args.max_output_tokens, self.timeout_s)

    async def _execute(
        self, ctx: ToolContext, args: ExecCommandArgs, argv: list[str], cwd: str, item: CommandExecutionItem,
        spec: SandboxSpec,
    ) -> ExecResult | str:
        """Run the command in `spec` as the item (started, streamed, completed): its result, or
        the model's text when it could not start."""
        env = command_env(os.environ)
        if not spec.network:
            env["CODEX_SANDBOX_NETWORK_DISABLED"] = "1"
        try:
            ready = await plan(spec, cwd=cwd, command=argv, env=env, thread_id=ctx.thread_id)
        except SandboxUnavailable as exc:
            return _ended(ctx, item, "failed", str(exc), f"exec_command failed: {exc}")
        try:
            return await run_command_item(ready, item, _item_events(ctx), cwd=cwd, env=env, timeout_s=self.timeout_s)
        except OSError as exc:
            return _ended(ctx, item, "failed", str(exc),
                          f"exec_command failed: could not start {argv[0]!r} in {cwd}: {exc.strerror or exc}")


REJECTED_BY_USER = 'exec_command failed: CreateProcess { message: "Rejected(\\"rejected by user\\")" }'
"""What the model reads when the user declines a command (Codex's words)."""
RETRY_QUESTION = "The command failed inside the sandbox. Run it again without the sandbox?"
UNSANDBOXED = SandboxSpec(full_access=True, network=True)


async def _approved(ctx: ToolContext, argv: list[str], cwd: str, reason: str | None, escalate: bool,
                    retry: bool = False) -> bool:
    """Ask the user to approve running `argv` (again, if `retry`); whether they did (for this
    once or the session)."""
    request = ExecApprovalRequestEvent(call_id=ctx.call_id, turn_id=ctx.turn_id, command=argv, cwd=cwd, reason=reason,
                                       retry=retry)
    key: Hashable = ("exec", tuple(argv), escalate)
    return await ctx.ask_approval(request, InProcess(key) if escalate else key) in ("approved", "approved_for_session")


def _item_events(ctx: ToolContext) -> ItemEvents:
    return ItemEvents(started=ctx.item_started, completed=ctx.item_completed, output_delta=ctx.output_delta)


def _ended(ctx: ToolContext, item: CommandExecutionItem, status: Literal["failed", "declined"],
           output: str | None, answer: str) -> str:
    """End the item that did not run (started and completed at once); the model reads `answer`."""
    end_unrun(_item_events(ctx), item, status, output)
    return answer


def model_output(result: ExecResult, max_output_tokens: float | None, timeout_s: float) -> str:
    """The `function_call_output` text, shaped as Codex's: header lines, then the output."""
    capture = result.output
    budget = max(1, int(max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS))
    lines = [f"Chunk ID: {secrets.token_hex(3)}", f"Wall time: {result.duration_s:.4f} seconds"]
    if result.timed_out:
        lines.append(f"Process timed out after {timeout_s:g} seconds; its process group was killed")
    lines += [
        f"Process exited with code {result.exit_code}",
        f"Original token count: {math.ceil(capture.total / BYTES_PER_TOKEN)}",
        "Output:",
    ]
    return "\n".join(lines) + "\n" + truncate_tokens(capture.text(), budget)


def truncate_tokens(text: str, budget: int) -> str:
    """`text` cut to about `budget` tokens: its head and tail kept, the middle counted."""
    limit = budget * BYTES_PER_TOKEN
    if len(text) <= limit:
        return text
    half = limit // 2
    dropped = math.ceil((len(text) - 2 * half) / BYTES_PER_TOKEN)
    return f"{text[:half]}\n…{dropped} tokens truncated…\n{text[-half:]}"


def _resolve(args: ExecCommandArgs, turn_cwd: str) -> tuple[str, str]:
    """The command's cwd and shell path (filesystem lookups: run in a thread)."""
    cwd = os.path.normpath(os.path.join(turn_cwd, args.workdir)) if args.workdir else turn_cwd
    if not os.path.isdir(cwd):
        raise ToolArgumentError(f"workdir {cwd!r} is not an existing folder")
    name = args.shell or "bash"
    shell = find_shell(name)
    if shell is None:
        raise ToolArgumentError(f"shell {name!r} was not found on PATH")
    return cwd, shell
