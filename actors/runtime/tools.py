"""Tools the model may call: what a tool is, what it knows of its turn, and the registry.

A tool never raises into the turn: every failure (bad arguments, a refused command, a crash)
becomes the `function_call_output` the model reads next.

The built-in tools are `exec_command` (`exec_command.py`), `apply_patch` (`apply_patch_tool.py`)
and `request_user_input` (`request_user_input.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from spindle.protocol.events import (
    ApprovalRequestEvent,
    DynamicToolCallRequestEvent,
    PermissionsRequestEvent,
    RequestUserInputEvent,
)
from spindle.protocol.items import (
    CustomToolCall,
    CustomToolCallOutput,
    FunctionCallOutput,
    ToolCall,
    TurnItem,
    call_output,
)
from spindle.protocol.sandbox import PermissionGrant, SandboxSpec
from spindle.protocol.settings import ReviewDecision, ThreadSettings

from .approvals import ToolResult, UserInputReply
from .turn_diff import TurnDiff

log = structlog.get_logger(__name__)

CLIP_DEFAULT_BYTES = 64 * 1024


async def _no_client(request: DynamicToolCallRequestEvent) -> ToolResult:
    """The default `ToolContext.call_client`: there is no client to ask."""
    return ToolResult(content_items=[{"type": "inputText", "text": "no client can run this tool"}], success=False)


async def _no_user(request: RequestUserInputEvent) -> UserInputReply:
    """The default `ToolContext.ask_user`: there is no user to ask."""
    return UserInputReply(error="no user can be asked here")


def _ignore_delta(item_id: str, delta: str) -> None:
    """The default `ToolContext.output_delta`: nobody listens."""


async def _grant_nothing(request: PermissionsRequestEvent) -> PermissionGrant:
    """The default `ToolContext.request_permissions`: nobody can grant anything."""
    return PermissionGrant()


def _ignore_diff(diff: str) -> None:
    """The default `ToolContext.diff_updated`: nobody listens."""


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
    call_client: Callable[[DynamicToolCallRequestEvent], Awaitable[ToolResult]] = _no_client
    """Ask the client that registered a dynamic tool to run it, and wait for its result."""
    ask_user: Callable[[RequestUserInputEvent], Awaitable[UserInputReply]] = _no_user
    """Ask the user the model's questions, and wait for the answers."""
    output_delta: Callable[[str, str], None] = _ignore_delta
    """Streams a chunk of a running item's output: (item id, text)."""
    request_permissions: Callable[[PermissionsRequestEvent], Awaitable[PermissionGrant]] = _grant_nothing
    """Ask the user for extra access and wait; what is granted (real paths that exist, asked for)
    widens the sandbox of the turn's later commands, or of the session's."""
    turn_diff: TurnDiff = field(default_factory=TurnDiff)
    """The files the turn's patches wrote (one per turn, shared by its calls: `apply_patch` records
    into it what it applied)."""
    diff_updated: Callable[[str], None] = _ignore_diff
    """Announces the turn's net diff (`TurnDiff`) after a patch changed it."""


class Tool(Protocol):
    name: str

    def spec(self) -> dict[str, Any]:
        """The Responses API tool definition."""
        ...

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        """Run with the model's JSON `arguments` (a freeform tool: its raw input); return the
        output text."""
        ...


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None) -> None:
        """A registry of `tools` (none by default; the runtime's are `exec_command`, `apply_patch` and
        `request_user_input`)."""
        self._tools: dict[str, Tool] = {}
        for tool in tools or []:
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

    def only(self, *names: str) -> ToolRegistry:
        """A new registry with just those of `names` this one has."""
        return ToolRegistry([self._tools[name] for name in names if name in self._tools])

    def specs(self, model: str = "") -> list[dict[str, Any]]:
        """The definitions the model is offered. A tool whose form depends on the model (Codex
        offers `apply_patch` freeform to GPT-5 models, as a function to others, or not at all) has
        `spec_for(model)`, which may answer None: not offered."""
        specs = []
        for tool in self._tools.values():
            spec_for = getattr(tool, "spec_for", None)
            spec = spec_for(model) if spec_for is not None else tool.spec()
            if spec is not None:
                specs.append(spec)
        return specs

    async def dispatch(self, call: ToolCall, ctx: ToolContext) -> FunctionCallOutput | CustomToolCallOutput:
        """Run `call`; its output item (a freeform tool's input is passed as it came)."""
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            output = f"unknown tool {call.name!r} (available: {known})"
        else:
            try:
                output = await tool.run(call.input if isinstance(call, CustomToolCall) else call.arguments, ctx)
            except ToolArgumentError as exc:
                output = f"invalid arguments for {call.name}: {exc}"
            except Exception as exc:  # a tool bug must not end the turn
                log.exception("tool failed", tool=call.name)
                output = f"tool {call.name} failed: {type(exc).__name__}: {exc}"
        return call_output(call, output)


class ToolArgumentError(ValueError):
    pass


def clip(data: bytes, limit: int = CLIP_DEFAULT_BYTES) -> str:
    """`data` as text, its middle elided when it is over `limit` bytes."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    half = limit // 2
    dropped = len(data) - 2 * half
    head = data[:half].decode("utf-8", "replace")
    tail = data[-half:].decode("utf-8", "replace")
    return f"{head}\n[… {dropped} bytes elided …]\n{tail}"
