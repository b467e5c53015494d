"""What is written to a rollout.

Written: `session_meta`; every model-visible history item (`response_item`), including the
initial context and interrupt markers; one `turn_context` per turn; `compacted`; and the events
below, which are what resume, fork and `thread/read` need to rebuild turns. A client request
(an approval, a dynamic tool call) and its end are written too: a thread resumed after the
process stopped mid-turn asks again what was still unanswered. Never written: deltas
(`agent_message_delta`), `item_started`, `turn_diff`, `mcp_startup_update`, `session_configured`, `stream_error`,
`warning`, `shutdown_complete` — they are live-only and would only bloat the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from spindle.protocol.events import (
    AgentMessageEvent,
    ApplyPatchApprovalRequestEvent,
    ApprovalResolvedEvent,
    ClientRequestEvent,
    ContextCompactedEvent,
    DynamicToolCallRequestEvent,
    EnteredReviewModeEvent,
    ErrorEvent,
    EventMsg,
    ExitedReviewModeEvent,
    ItemCompletedEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    ThreadRolledBackEvent,
    TokenCountEvent,
    TurnAbortedEvent,
    UserMessageEvent,
)
from spindle.protocol.items import (
    AgentMessageItem,
    ContextCompactionItem,
    DynamicToolCallItem,
    McpToolCallItem,
    UserMessageItem,
)

PERSISTED_EVENTS = (
    TaskStartedEvent,
    TaskCompleteEvent,
    TurnAbortedEvent,
    TokenCountEvent,
    ErrorEvent,
    ThreadRolledBackEvent,
    ContextCompactedEvent,
    AgentMessageEvent,
    UserMessageEvent,
    ApprovalResolvedEvent,
    EnteredReviewModeEvent,
    ExitedReviewModeEvent,
)


def should_persist_event(msg: EventMsg) -> bool:
    if isinstance(msg, ItemCompletedEvent):
        return isinstance(msg.item, UserMessageItem | AgentMessageItem | McpToolCallItem | DynamicToolCallItem
                          | ContextCompactionItem)
    return isinstance(msg, PERSISTED_EVENTS) or isinstance(msg, ClientRequestEvent)


def persisted_form(msg: EventMsg) -> EventMsg:
    """`msg` as the rollout keeps it: a client request without the bulk its tool call already
    holds (a patch's changes, a dynamic tool's arguments): a restart needs only its call id."""
    if isinstance(msg, ApplyPatchApprovalRequestEvent) and msg.changes:
        return msgspec.structs.replace(msg, changes={})
    if isinstance(msg, DynamicToolCallRequestEvent) and msg.arguments is not None:
        return msgspec.structs.replace(msg, arguments=None)
    return msg


REDACTED = "<redacted: not written to the rollout>"
_SECRET_WORDS = ("authorization", "token", "secret", "password", "api_key", "apikey", "cookie")
_HEADER_MAPS = ("http_headers", "headers")


def without_secrets(config: Mapping[str, Any]) -> dict[str, Any]:
    """A thread's own config layer as its rollout keeps it: every value under a key that names a
    secret (an authorization, a token, a password, an API key, a cookie), and every HTTP header
    value, replaced by `REDACTED`, at any depth. A client's config can carry its own loopback
    credentials (the Codex TUI passes an MCP server with a bearer header); a rollout is no place
    for them. A resumed thread has the key, not the value."""

    def clean(key: str, value: Any, headers: bool) -> Any:
        last = key.rsplit(".", 1)[-1].lower()
        if headers or any(word in last for word in _SECRET_WORDS):
            return REDACTED if not isinstance(value, Mapping) else {k: REDACTED for k in value}
        if isinstance(value, Mapping):
            inner = last in _HEADER_MAPS
            return {str(k): clean(str(k), v, inner) for k, v in value.items()}
        return value

    return {key: clean(key, value, False) for key, value in config.items()}
