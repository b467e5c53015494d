"""What the model's stream events carry, made into the runtime's values: output items (decoded
tolerantly, given ids, shown as turn items), token usage, and the error a failed response is."""

from __future__ import annotations

import msgspec
import structlog

from spindle.protocol.events import TokenUsage
from spindle.protocol.ids import new_id
from spindle.protocol.items import (
    AgentMessageContent,
    AgentMessageItem,
    CustomToolCall,
    FunctionCall,
    Message,
    OutputText,
    Reasoning,
    ReasoningItem,
    ResponseItem,
    TurnItem,
)
from spindle.protocol.responses import KNOWN_ITEM_TYPES, TypeOnly, Usage

from .model_client import ModelError

log = structlog.get_logger(__name__)
_item_decoder = msgspec.json.Decoder(ResponseItem)
_type_decoder = msgspec.json.Decoder(TypeOnly)


def failure(code: str | None, message: str) -> ModelError:
    if code == "context_length_exceeded":
        return ModelError(
            "Codex ran out of room in the model's context window. Start a new thread or clear "
            "earlier history before retrying.",
            phase="stream",
            retryable=False,
            info="context_window_exceeded",
        )
    return ModelError(
        f"stream disconnected before completion: {message}",
        phase="stream",
        retryable=True,
        info="other",
    )


def decode_item(raw: msgspec.Raw, stream_event: str) -> ResponseItem | None:
    """The item of an `output_item` event; None, with a log line, for one of an unknown type or
    one that does not decode (a type that is not a string, a non-object, wrong field types)."""
    try:
        return _item_decoder.decode(raw)  # type: ignore[no-any-return]
    except (msgspec.MsgspecError, RecursionError) as exc:
        try:
            kind: str | None = _type_decoder.decode(raw).type
        except (msgspec.MsgspecError, RecursionError):
            kind = None
        if kind and kind not in KNOWN_ITEM_TYPES:
            log.debug("ignoring output item of unknown type", type=kind, stream_event=stream_event)
        else:
            log.warning("skipping malformed output item", type=kind, stream_event=stream_event, error=str(exc))
        return None


def with_id(item: ResponseItem) -> ResponseItem:
    if isinstance(item, Message | FunctionCall | CustomToolCall | Reasoning) and item.id is msgspec.UNSET:
        return msgspec.structs.replace(item, id=f"item_{new_id()}")
    return item


def turn_item(item: ResponseItem) -> TurnItem | None:
    match item:
        case Message(role="assistant", id=str(item_id)):
            texts = [AgentMessageContent(text=p.text) for p in item.content if isinstance(p, OutputText)]
            return AgentMessageItem(id=item_id, content=texts)
        case Reasoning(id=str(item_id), summary=summary):
            return ReasoningItem(id=item_id, summary_text=[s.text for s in summary])
    return None


def token_usage(usage: Usage) -> TokenUsage:
    return TokenUsage(
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0,
        output_tokens=usage.output_tokens,
        reasoning_output_tokens=(
            usage.output_tokens_details.reasoning_tokens if usage.output_tokens_details else 0
        ),
        total_tokens=usage.total_tokens,
    )
