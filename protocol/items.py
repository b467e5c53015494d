"""Conversation items, named as the Responses API and rollout files name them.

`ResponseItem` is what the model sees (history); `UserInput` is what a user submits;
`TurnItem` is the client-facing view of one item of a turn (item_started / item_completed).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

# --- user input -------------------------------------------------------------


class UserInputBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """One piece of user input (`text`, `image`, `local_image`)."""


class TextInput(UserInputBase, tag="text", kw_only=True, frozen=True):
    text: str


class ImageInput(UserInputBase, tag="image", kw_only=True, frozen=True):
    image_url: str


class LocalImageInput(UserInputBase, tag="local_image", kw_only=True, frozen=True):
    path: str


UserInput = TextInput | ImageInput | LocalImageInput

# --- Responses API content and items ---------------------------------------


class ContentBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """One part of a message's content."""


class InputText(ContentBase, tag="input_text", kw_only=True, frozen=True):
    text: str


class OutputText(ContentBase, tag="output_text", kw_only=True, frozen=True):
    text: str
    annotations: list[object] = msgspec.field(default_factory=list)


class InputImage(ContentBase, tag="input_image", kw_only=True, frozen=True):
    image_url: str


ContentItem = InputText | OutputText | InputImage


class ResponseItemBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """One item of model-visible history."""


class Message(ResponseItemBase, tag="message", kw_only=True, frozen=True):
    role: Literal["user", "assistant", "developer", "system"]
    content: list[ContentItem]
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET

    def text(self) -> str:
        """The concatenated text parts of this message."""
        return "".join(part.text for part in self.content if not isinstance(part, InputImage))


class FunctionCall(ResponseItemBase, tag="function_call", kw_only=True, frozen=True):
    name: str
    arguments: str
    call_id: str
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET


class FunctionCallOutput(ResponseItemBase, tag="function_call_output", kw_only=True, frozen=True):
    call_id: str
    output: str


class SummaryText(msgspec.Struct, tag_field="type", tag="summary_text", kw_only=True, frozen=True):
    text: str


class Reasoning(ResponseItemBase, tag="reasoning", kw_only=True, frozen=True):
    id: str | UnsetType = UNSET
    summary: list[SummaryText] = msgspec.field(default_factory=list)
    encrypted_content: str | None | UnsetType = UNSET


class CustomToolCall(ResponseItemBase, tag="custom_tool_call", kw_only=True, frozen=True):
    """A call of a freeform tool (`apply_patch`): `input` is the tool's raw text, not JSON."""

    name: str
    input: str
    call_id: str
    id: str | UnsetType = UNSET
    status: str | UnsetType = UNSET


class CustomToolCallOutput(ResponseItemBase, tag="custom_tool_call_output", kw_only=True, frozen=True):
    call_id: str
    output: str


ResponseItem = Message | FunctionCall | FunctionCallOutput | Reasoning | CustomToolCall | CustomToolCallOutput
ToolCall = FunctionCall | CustomToolCall
"""A call the model makes of a tool; each gets the output item of its kind."""


def user_message(inputs: list[UserInput] | tuple[UserInput, ...]) -> Message:
    """The `message` item (role user) that carries a user's input to the model."""
    content: list[ContentItem] = []
    for piece in inputs:
        match piece:
            case TextInput(text=text):
                content.append(InputText(text=text))
            case ImageInput(image_url=url):
                content.append(InputImage(image_url=url))
            case LocalImageInput(path=path):
                content.append(InputText(text=f"<image path={path!r}>"))
    return Message(role="user", content=content)


# --- client-facing turn items ----------------------------------------------


class AgentMessageContent(msgspec.Struct, tag_field="type", tag="Text", kw_only=True, frozen=True):
    text: str


class TurnItemBase(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """The client-facing view of one item of a turn."""

    id: str


class UserMessageItem(TurnItemBase, tag="UserMessage", kw_only=True, frozen=True):
    content: list[UserInput]


class AgentMessageItem(TurnItemBase, tag="AgentMessage", kw_only=True, frozen=True):
    content: list[AgentMessageContent]

    def text(self) -> str:
        return "".join(part.text for part in self.content)


class ReasoningItem(TurnItemBase, tag="Reasoning", kw_only=True, frozen=True):
    summary_text: list[str] = msgspec.field(default_factory=list)


CommandSource = Literal["agent", "userShell", "unifiedExecStartup", "unifiedExecInteraction"]
"""Who ran a command: the model's `exec_command` is `unifiedExecStartup`, as in Codex."""


class CommandExecutionItem(TurnItemBase, tag="CommandExecution", kw_only=True, frozen=True):
    """A command run: `command` as shown (`/bin/bash -lc '…'`), `actions` the commands it runs
    (today the one script, an `unknown` action), `process_id` its process once started."""

    command: str
    cwd: str
    status: Literal["inProgress", "completed", "failed", "declined"]
    aggregated_output: str | None = None
    exit_code: int | None = None
    duration_ms: int | None = None
    source: CommandSource = "agent"
    process_id: str | None = None
    actions: list[str] = msgspec.field(default_factory=list)


class McpToolCallItem(TurnItemBase, tag="McpToolCall", kw_only=True, frozen=True):
    """A call of an MCP server's tool: `server` and `tool` are the raw names (not the model's).

    `result` is `{content, structuredContent?}` (kept when the server answered `isError`);
    `error` the message of a call that failed before any answer (transport, timeout, bad args)."""

    server: str
    tool: str
    arguments: Any = None
    status: Literal["inProgress", "completed", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int | None = None


class PatchChange(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One file of a patch: its absolute path, what happens to it, and the diff (for an addition
    or a deletion, the file's text)."""

    path: str
    kind: Literal["add", "delete", "update"]
    diff: str
    move_path: str | None = None


class FileChangeItem(TurnItemBase, tag="FileChange", kw_only=True, frozen=True):
    """An `apply_patch` call: the files it changes, and whether it was applied."""

    changes: list[PatchChange]
    status: Literal["inProgress", "completed", "failed", "declined"]


class DynamicToolSpec(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A tool a client registered on its thread (`dynamicTools`): the model calls it, the server
    asks that client to run it (`item/tool/call`). `defer_loading`: registered and callable, but
    not offered to the model."""

    name: str
    description: str
    input_schema: Any
    namespace: str | None = None
    defer_loading: bool = False


class DynamicToolCallItem(TurnItemBase, tag="DynamicToolCall", kw_only=True, frozen=True):
    """A call of a client's tool: the client's `content_items` and whether it `success`-ed."""

    tool: str
    namespace: str | None = None
    arguments: Any = None
    status: Literal["inProgress", "completed", "failed"]
    content_items: list[dict[str, Any]] | None = None
    success: bool | None = None
    duration_ms: int | None = None


class ContextCompactionItem(TurnItemBase, tag="ContextCompaction", kw_only=True, frozen=True):
    """A compaction of the thread's history (started when it begins, completed once replaced)."""


TurnItem = (
    UserMessageItem | AgentMessageItem | ReasoningItem | CommandExecutionItem | McpToolCallItem | FileChangeItem
    | DynamicToolCallItem | ContextCompactionItem
)


TURN_ABORTED_MARKER = (
    "<turn_aborted>\nThe user interrupted the previous turn on purpose. Any running tools were "
    "stopped. If any tools or commands were aborted, they may have partially executed.\n"
    "</turn_aborted>"
)


def turn_aborted_marker() -> Message:
    """The history item an interrupt leaves, so the model knows the last turn was cut short."""
    return Message(role="user", content=[InputText(text=TURN_ABORTED_MARKER)])


def call_output(call: ToolCall, output: str) -> FunctionCallOutput | CustomToolCallOutput:
    """The output item answering `call`, of its kind."""
    if isinstance(call, CustomToolCall):
        return CustomToolCallOutput(call_id=call.call_id, output=output)
    return FunctionCallOutput(call_id=call.call_id, output=output)


def close_dangling_calls(history: list[ResponseItem]) -> list[FunctionCallOutput | CustomToolCallOutput]:
    """Outputs for tool calls in `history` that never got one (an aborted turn)."""
    answered = {item.call_id for item in history if isinstance(item, FunctionCallOutput | CustomToolCallOutput)}
    return [
        call_output(item, "aborted")
        for item in history
        if isinstance(item, FunctionCall | CustomToolCall) and item.call_id not in answered
    ]
