"""The Responses API wire: the request body Spindle sends and the SSE events it reads."""

from __future__ import annotations

from typing import Any

import msgspec

from .items import ResponseItem


class ResponsesRequest(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Body of `POST {base_url}/responses`."""

    model: str
    instructions: str
    input: list[ResponseItem]
    tools: list[dict[str, Any]]
    tool_choice: str = "auto"
    parallel_tool_calls: bool = False
    reasoning: dict[str, Any] | None = None
    store: bool = False
    stream: bool = True
    include: list[str] = msgspec.field(default_factory=list)
    prompt_cache_key: str = ""


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails | None = None
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails | None = None
    total_tokens: int = 0


class ResponseError(msgspec.Struct, kw_only=True):
    code: str | None = None
    message: str = ""


class ResponseBody(msgspec.Struct, kw_only=True):
    id: str = ""
    status: str | None = None
    usage: Usage | None = None
    error: ResponseError | None = None


class StreamEventBase(msgspec.Struct, tag_field="type", kw_only=True):
    """One SSE `data:` object of a Responses stream."""


class ResponseCreated(StreamEventBase, tag="response.created", kw_only=True):
    response: ResponseBody


class OutputItemAdded(StreamEventBase, tag="response.output_item.added", kw_only=True):
    output_index: int = 0
    item: msgspec.Raw


class OutputItemDone(StreamEventBase, tag="response.output_item.done", kw_only=True):
    output_index: int = 0
    item: msgspec.Raw


class OutputTextDelta(StreamEventBase, tag="response.output_text.delta", kw_only=True):
    item_id: str = ""
    delta: str


class ResponseCompleted(StreamEventBase, tag="response.completed", kw_only=True):
    response: ResponseBody


class ResponseFailed(StreamEventBase, tag="response.failed", kw_only=True):
    response: ResponseBody


class ResponseIncomplete(StreamEventBase, tag="response.incomplete", kw_only=True):
    response: ResponseBody


StreamEvent = (
    ResponseCreated
    | OutputItemAdded
    | OutputItemDone
    | OutputTextDelta
    | ResponseCompleted
    | ResponseFailed
    | ResponseIncomplete
)

KNOWN_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})


class TypeOnly(msgspec.Struct):
    """Just the `type` of an object: used to tell an unknown kind from a malformed one."""

    type: str = ""
