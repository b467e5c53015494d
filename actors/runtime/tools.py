"""Tools the model may call: a registry, and the one built-in tool, `shell`.

A tool never raises into the turn: every failure (bad arguments, a refused command, a crash)
becomes the `function_call_output` the model reads next.
"""

from __future__ import annotations

import math
import shlex
import subprocess
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import structlog
import trio

from spindle.protocol.events import ApprovalRequestEvent
from spindle.protocol.items import CommandExecutionItem, FunctionCall, FunctionCallOutput, TurnItem
from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import ApprovalPolicy, ReviewDecision, SandboxMode, ThreadSettings

log = structlog.get_logger(__name__)

SHELL_DEFAULT_TIMEOUT_MS = 60_000
SHELL_MAX_OUTPUT_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """What a tool may know of the turn that called it."""

    thread_id: str
    turn_id: str
    call_id: str
    settings: ThreadSettings
    sandbox: SandboxSpec | None
    """What this turn's commands may touch, realised from `settings` and the thread's profiles;
    None when it cannot be realised: then `sandbox_error` says why, and no command may run."""
    ask_approval: Callable[[ApprovalRequestEvent, Hashable], Awaitable[ReviewDecision]]
    """Ask the user to approve a request and wait for the decision; one the user approved for
    the session under the same key (a command's argv, say) is approved without asking."""
    item_started: Callable[[TurnItem], None]
    item_completed: Callable[[TurnItem], None]
    sandbox_error: str | None = None


class Tool(Protocol):
    name: str

    def spec(self) -> dict[str, Any]:
        """The Responses API tool definition."""
        ...

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        """Run with the model's JSON `arguments`; return the output text."""
        ...


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools if tools is not None else [ShellTool()]:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return list(self._tools)

    def extended(self, tools: list[Tool]) -> ToolRegistry:
        """A new registry with these tools and `tools` (a turn's own set)."""
        registry = ToolRegistry([])
        registry._tools = {**self._tools}
        for tool in tools:
            registry.register(tool)
        return registry

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._tools.values()]

    async def dispatch(self, call: FunctionCall, ctx: ToolContext) -> FunctionCallOutput:
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            output = f"unknown tool {call.name!r} (available: {known})"
        else:
            try:
                output = await tool.run(call.arguments, ctx)
            except ToolArgumentError as exc:
                output = f"invalid arguments for {call.name}: {exc}"
            except Exception as exc:  # a tool bug must not end the turn
                log.exception("tool failed", tool=call.name)
                output = f"tool {call.name} failed: {type(exc).__name__}: {exc}"
        return FunctionCallOutput(call_id=call.call_id, output=output)


class ToolArgumentError(ValueError):
    pass


class ShellArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    command: list[str] | str
    workdir: str | None = None
    timeout_ms: int | None = None


_shell_args = msgspec.json.Decoder(ShellArgs)


def shell_allowed(sandbox: SandboxMode, approval: ApprovalPolicy) -> bool:
    """Until approvals and sandboxing exist, commands run only where the user allows anything."""
    return sandbox == "danger-full-access" and approval == "never"


class ShellTool:
    """Runs a command with `trio.run_process`: cwd, timeout, merged output capture, exit code."""

    name = "shell"

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": "Runs a shell command and returns its output and exit code.",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {
                        "description": "argv list, or a string run with `bash -lc`.",
                        "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
                    },
                    "workdir": {"type": "string", "description": "Working directory; default the turn cwd."},
                    "timeout_ms": {"type": "number", "description": "Kill the command after this long."},
                },
                "required": ["command"],
                "additionalProperties": False,
            },
        }

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        try:
            args = _shell_args.decode(arguments or "{}")
        except msgspec.MsgspecError as exc:
            raise ToolArgumentError(str(exc)) from None
        argv = ["bash", "-lc", args.command] if isinstance(args.command, str) else args.command
        if not argv:
            raise ToolArgumentError("command is empty")
        display = args.command if isinstance(args.command, str) else shlex.join(argv)
        cwd = args.workdir or ctx.settings.cwd
        item = CommandExecutionItem(id=ctx.call_id, command=display, cwd=cwd, status="inProgress")
        if not shell_allowed(ctx.settings.sandbox_mode, ctx.settings.approval_policy):
            ctx.item_completed(msgspec.structs.replace(item, status="declined"))
            return (
                "shell refused: commands run only with sandbox_mode = \"danger-full-access\" and "
                f"approval_policy = \"never\"; this turn has sandbox_mode = \"{ctx.settings.sandbox_mode}\" "
                f"and approval_policy = \"{ctx.settings.approval_policy}\""
            )
        if ctx.sandbox is None:
            ctx.item_completed(msgspec.structs.replace(item, status="declined"))
            return f"shell refused: the sandbox cannot be set up: {ctx.sandbox_error}"
        ctx.item_started(item)
        timeout_ms = args.timeout_ms or SHELL_DEFAULT_TIMEOUT_MS
        started = time.monotonic()
        result: subprocess.CompletedProcess[bytes] | None = None
        try:
            with trio.move_on_after(timeout_ms / 1000):
                result = await trio.run_process(
                    argv, cwd=cwd, capture_stdout=True, stderr=subprocess.STDOUT, check=False
                )
        except OSError as exc:
            ctx.item_completed(msgspec.structs.replace(item, status="failed", aggregated_output=str(exc)))
            return f"failed to start {argv[0]!r} in {cwd}: {exc.strerror or exc}"
        elapsed = time.monotonic() - started
        duration_ms = math.floor(elapsed * 1000)
        if result is None:
            ctx.item_completed(msgspec.structs.replace(item, status="failed", duration_ms=duration_ms))
            return f"command timed out after {timeout_ms} ms"
        output = clip(result.stdout)
        ctx.item_completed(
            msgspec.structs.replace(
                item,
                status="completed" if result.returncode == 0 else "failed",
                aggregated_output=output,
                exit_code=result.returncode,
                duration_ms=duration_ms,
            )
        )
        return f"Exit code: {result.returncode}\nWall time: {elapsed:.3f} seconds\nOutput:\n{output}"


def clip(data: bytes, limit: int = SHELL_MAX_OUTPUT_BYTES) -> str:
    """`data` as text, its middle elided when it is over `limit` bytes."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    half = limit // 2
    dropped = len(data) - 2 * half
    head = data[:half].decode("utf-8", "replace")
    tail = data[-half:].decode("utf-8", "replace")
    return f"{head}\n[… {dropped} bytes elided …]\n{tail}"
