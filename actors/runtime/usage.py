"""Token accounting for one thread: the running total and the last turn's usage."""

from __future__ import annotations

from spindle.protocol.events import TokenUsage, TokenUsageInfo


class UsageMeter:
    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = TokenUsage()

    def add(self, usage: TokenUsage, window: int | None) -> TokenUsageInfo:
        """Count one sampling's usage; returns what the `token_count` event reports."""
        self.total = self.total + usage
        return TokenUsageInfo(total_token_usage=self.total, last_token_usage=usage, model_context_window=window)
