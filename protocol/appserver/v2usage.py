"""`thread/tokenUsage/updated`: a thread's token usage, in total and for its last turn."""

from __future__ import annotations

from .v2 import Wire


class TokenUsageBreakdown(Wire, kw_only=True):
    total_tokens: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_output_tokens: int


class ThreadTokenUsage(Wire, kw_only=True):
    total: TokenUsageBreakdown
    last: TokenUsageBreakdown
    model_context_window: int | None = None


class TokenUsageUpdated(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    token_usage: ThreadTokenUsage
