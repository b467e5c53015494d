"""Rollout lines: `{"timestamp", "ordinal", "type", "payload"}`, as the real Codex writes them.

In memory a rollout item is the payload struct itself; its line `type` follows from its class
(`line_type`). Reading decodes each line into a tagged `RolloutLine` so a whole file of lines
Spindle knows decodes in one `decode_lines` pass.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .events import EventMsg, EventMsgBase
from .items import DynamicToolSpec, ResponseItem, ResponseItemBase
from .settings import Granular


class BaseInstructions(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    text: str


class SessionMeta(msgspec.Struct, kw_only=True, frozen=True):
    """Line 0 of every rollout: who the thread is."""

    id: str
    timestamp: str
    cwd: str
    originator: str = "spindle"
    cli_version: str = ""
    source: Any = "vscode"
    """Where the thread came from: Codex writes "vscode" or "cli" for interactive threads (which its
    `thread/list` shows by default), "exec", or an object for sub-agents."""
    model_provider: str | None = None
    base_instructions: BaseInstructions | None = None
    forked_from_id: str | None = None
    session_id: str | None = None
    session_config: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    """Spindle only: the thread's own config layer (`thread/start`'s `config` map, dotted keys),
    restored on resume. Left out of the line when unset; Codex's reader ignores the field."""
    runtime_workspace_roots: list[str] | msgspec.UnsetType = msgspec.UNSET
    """The thread's runtime workspace roots at start (Codex writes the same field)."""
    permissions: str | msgspec.UnsetType = msgspec.UNSET
    """Spindle only: the permission profile id the thread started with (unset: legacy sandbox)."""
    dynamic_tools: list[DynamicToolSpec] | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="spindle_dynamic_tools")
    """Spindle only: the tools the client registered at `thread/start`, restored on resume. Under
    its own name: Codex reads a `dynamic_tools` of another shape, and a session_meta it cannot
    read hides the whole thread from it."""
    memory_mode: str | msgspec.UnsetType = msgspec.UNSET
    """The thread's memory mode ("enabled" or "disabled"), as Codex records it: in a copy of line
    0 appended when the mode is set; the last `session_meta` that carries one holds."""


class SandboxPolicy(msgspec.Struct, kw_only=True, frozen=True):
    type: str


class ModeSettingsRecord(msgspec.Struct, kw_only=True, frozen=True):
    model: str = ""
    reasoning_effort: str | None = None
    developer_instructions: str | None = None


class CollaborationModeRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A turn's collaboration mode as Codex records it (every field written, nulls too); `mode`
    is kept as written, so a mode this version does not know still reads."""

    mode: str = "default"
    settings: ModeSettingsRecord = msgspec.field(default_factory=ModeSettingsRecord)


class TurnContextItem(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The settings one turn ran with."""

    cwd: str
    approval_policy: str | Granular
    model: str
    sandbox_policy: SandboxPolicy | None = None
    turn_id: str | None = None
    effort: str | None = None
    summary: str | None = None
    permissions: str | None = None
    """Spindle only: the permission profile id the turn selected (None: `sandbox_policy` selects)."""
    runtime_workspace_roots: list[str] | None = None
    """The thread's runtime workspace roots for the turn (Codex's name; None: just the cwd)."""
    collaboration_mode: CollaborationModeRecord | None = None


class CompactedItem(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """History was replaced by a summary (and optionally an explicit replacement history)."""

    message: str
    replacement_history: list[ResponseItem] | None = None


RolloutItem = SessionMeta | TurnContextItem | CompactedItem | ResponseItem | EventMsg


def line_type(item: object) -> str:
    if isinstance(item, ResponseItemBase):
        return "response_item"
    if isinstance(item, EventMsgBase):
        return "event_msg"
    if isinstance(item, TurnContextItem):
        return "turn_context"
    if isinstance(item, SessionMeta):
        return "session_meta"
    if isinstance(item, CompactedItem):
        return "compacted"
    raise TypeError(f"not a rollout item: {type(item).__name__}")


class RolloutLineOut(msgspec.Struct, kw_only=True):
    timestamp: str
    ordinal: int
    type: str
    payload: Any


class _LineBase(msgspec.Struct, tag_field="type", kw_only=True):
    timestamp: str = ""
    ordinal: int | None = None


class SessionMetaLine(_LineBase, tag="session_meta", kw_only=True):
    payload: SessionMeta


class ResponseItemLine(_LineBase, tag="response_item", kw_only=True):
    payload: ResponseItem


class EventMsgLine(_LineBase, tag="event_msg", kw_only=True):
    payload: EventMsg


class TurnContextLine(_LineBase, tag="turn_context", kw_only=True):
    payload: TurnContextItem


class CompactedLine(_LineBase, tag="compacted", kw_only=True):
    payload: CompactedItem


RolloutLine = SessionMetaLine | ResponseItemLine | EventMsgLine | TurnContextLine | CompactedLine
