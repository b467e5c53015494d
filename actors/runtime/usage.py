"""Token accounting for one thread: the running total and the last turn's usage."""

from __future__ import annotations

from spindle.protocol.events import TokenUsage, TokenUsageInfo


class UsageMeter:
    __slots__ = ("total", "last")

    def __init__(self) -> None:
        self.total = TokenUsage()
        self.last: TokenUsage | None = None
        """The last sampling's usage (or, after a compaction, the compacted history's estimate)."""

    @property
    def context_tokens(self) -> int:
        """How many tokens the model's context holds now, as far as is known (0: nothing yet)."""
        return self.last.total_tokens if self.last is not None else 0

    def add(self, usage: TokenUsage, window: int | None, *, in_context: bool = True) -> TokenUsageInfo:
        """Count one sampling's usage; returns what the `token_count` event reports. Unless
        `in_context`, it is not the size of the thread's context (a review's own request)."""
        self.total = self.total + usage
        if in_context:
            self.last = usage
        return TokenUsageInfo(total_token_usage=self.total, last_token_usage=usage, model_context_window=window)

    def estimate(self, tokens: int, window: int | None) -> TokenUsageInfo:
        """The history was replaced (a compaction): its size is `tokens`, as estimated, until the
        next sampling reports it."""
        self.last = TokenUsage(total_tokens=tokens)
        return TokenUsageInfo(total_token_usage=self.total, last_token_usage=self.last, model_context_window=window)
