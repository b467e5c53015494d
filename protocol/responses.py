"""The Responses API wire: the request body Spindle sends, the SSE framing and the events it reads.

Items and `usage` stay `msgspec.Raw` in the events and are decoded one by one, so that a malformed
item can be skipped and a malformed `usage` reported as such, without losing the whole event.
"""

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


NULL = msgspec.Raw(b"null")
"""The default of a raw field that was left out: decodes like an explicit `null`."""


class ResponseBody(msgspec.Struct, kw_only=True):
    id: str = ""
    status: str | None = None
    usage: msgspec.Raw = NULL
    """A `Usage` or null, decoded on its own."""
    error: ResponseError | None = None


class StreamEventBase(msgspec.Struct, tag_field="type", kw_only=True):
    """One SSE `data:` object of a Responses stream."""


class ResponseCreated(StreamEventBase, tag="response.created", kw_only=True):
    response: ResponseBody


class OutputItemAdded(StreamEventBase, tag="response.output_item.added", kw_only=True):
    output_index: int = 0
    item: msgspec.Raw = NULL


class OutputItemDone(StreamEventBase, tag="response.output_item.done", kw_only=True):
    output_index: int = 0
    item: msgspec.Raw = NULL


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

KNOWN_ITEM_TYPES = frozenset({
    "message", "function_call", "function_call_output", "reasoning", "custom_tool_call", "custom_tool_call_output",
})


class TypeOnly(msgspec.Struct):
    """Just the `type` of an object: used to tell an unknown kind from a malformed one."""

    type: str = ""


class SSEEventTooLarge(ValueError):
    """An SSE event grew past the decoder's size limit before its end."""


class SSEDecoder:
    """Sans-IO framing of a `text/event-stream` body: bytes in, each event's `data` out.

    Lines end with LF or CRLF; `data:` lines are joined with LF; comment lines (`:`), `event:`,
    `id:` and `retry:` are ignored (Responses events carry their type in the JSON); a blank line
    ends the event, and an event without data is dropped. An unfinished event at the end of the
    body is not returned, as the SSE spec says. `max_event_bytes` bounds the memory held for one
    event: past it, `feed` raises SSEEventTooLarge rather than buffer an endless line.
    """

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self._data: list[bytes] = []
        self._data_bytes = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add `chunk`; returns the data of every event it completes, in order."""
        self._buffer += chunk
        events: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(self._buffer[start:end]).removesuffix(b"\r")
            start = end + 1
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                self._data, self._data_bytes = [], 0
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
                self._data_bytes += len(value)
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._data_bytes + len(self._buffer) > self.max_event_bytes:
            raise SSEEventTooLarge(f"an SSE event is larger than {self.max_event_bytes} bytes")
        return events
