"""App-server v2 user input and thread items (the `ThreadItem` union), camelCase on the wire."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from .v2base import Wire

# --- user input -------------------------------------------------------------


class UserInputV2Base(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    pass


class TextUserInput(UserInputV2Base, tag="text", kw_only=True, frozen=True):
    text: str
    text_elements: list[Any] = msgspec.field(default_factory=list)


class ImageUserInput(UserInputV2Base, tag="image", kw_only=True, frozen=True):
    url: str


class LocalImageUserInput(UserInputV2Base, tag="localImage", kw_only=True, frozen=True):
    path: str


UserInputV2 = TextUserInput | ImageUserInput | LocalImageUserInput

# --- thread items -----------------------------------------------------------


class ThreadItemBase(msgspec.Struct, tag_field="type", kw_only=True, rename="camel"):
    pass


class UserMessageThreadItem(ThreadItemBase, tag="userMessage", kw_only=True):
    id: str
    content: list[UserInputV2]


class AgentMessageThreadItem(ThreadItemBase, tag="agentMessage", kw_only=True):
    id: str
    text: str
    phase: str | None = None


class ReasoningThreadItem(ThreadItemBase, tag="reasoning", kw_only=True):
    id: str
    summary: list[str] = msgspec.field(default_factory=list)
    content: list[str] = msgspec.field(default_factory=list)


class CommandExecutionThreadItem(ThreadItemBase, tag="commandExecution", kw_only=True):
    id: str
    command: str
    cwd: str
    status: Literal["inProgress", "completed", "failed", "declined"]
    command_actions: list[Any] = msgspec.field(default_factory=list)
    aggregated_output: str | None = None
    exit_code: int | None = None
    duration_ms: int | None = None
    source: str = "agent"
    process_id: str | None = None


class McpToolCallError(Wire, kw_only=True):
    message: str


class McpToolCallThreadItem(ThreadItemBase, tag="mcpToolCall", kw_only=True):
    id: str
    server: str
    tool: str
    arguments: Any
    status: Literal["inProgress", "completed", "failed"]
    result: dict[str, Any] | None = None
    error: McpToolCallError | None = None
    duration_ms: int | None = None
    environment_id: str | None = None
    plugin_id: str | None = None
    read_only_hint: bool | None = None
    app_context: Any = None
    mcp_app_ui: Any = None
    mcp_app_resource_uri: str | None = None


class PatchChangeKind(Wire, kw_only=True):
    type: Literal["add", "delete", "update"]
    move_path: str | None | UnsetType = msgspec.field(default=UNSET, name="move_path")


class FileUpdateChange(Wire, kw_only=True):
    path: str
    kind: PatchChangeKind
    diff: str


class FileChangeThreadItem(ThreadItemBase, tag="fileChange", kw_only=True):
    id: str
    changes: list[FileUpdateChange]
    status: Literal["inProgress", "completed", "failed", "declined"]


class DynamicToolCallThreadItem(ThreadItemBase, tag="dynamicToolCall", kw_only=True):
    id: str
    tool: str
    namespace: str | None = None
    arguments: Any = None
    status: Literal["inProgress", "completed", "failed"]
    content_items: list[Any] | None = None
    success: bool | None = None
    duration_ms: int | None = None


class ContextCompactionThreadItem(ThreadItemBase, tag="contextCompaction", kw_only=True):
    id: str


class EnteredReviewModeThreadItem(ThreadItemBase, tag="enteredReviewMode", kw_only=True):
    """A review began; `review` is what it reviews, for people."""

    id: str
    review: str


class ExitedReviewModeThreadItem(ThreadItemBase, tag="exitedReviewMode", kw_only=True):
    """A review ended; `review` is its rendered output."""

    id: str
    review: str


ThreadItem = (
    UserMessageThreadItem | AgentMessageThreadItem | ReasoningThreadItem | CommandExecutionThreadItem
    | McpToolCallThreadItem | FileChangeThreadItem | DynamicToolCallThreadItem | ContextCompactionThreadItem
    | EnteredReviewModeThreadItem | ExitedReviewModeThreadItem
)
