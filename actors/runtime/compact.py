"""Compaction: the model summarises the history, and the history becomes the user's recent
messages and that summary, as in Codex.

It runs as a task of its own (`CompactTask`, for the `compact` op), or inside a regular turn once
the context passed the auto-compact limit (`auto_compact_limit`): before the turn's input
(`pre_turn`) or between two samplings (`mid_turn`). The model is asked with the history, then a
user message holding `COMPACTION_PROMPT`, and no tools. The new history is the user's messages
(newest first, within `USER_MESSAGES_BUDGET` tokens, then in their order) and the summary as a
user message starting with Codex's `SUMMARY_PREFIX`. The initial context is left out, so the next
turn gives it again, except mid-turn, where it goes before the last user message (the summary
stays last). Nothing changes before the summary is in: an interrupt or a failed sampling leaves
the history as it was. The `compacted` rollout line carries the new history, so resume and fork
start from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from spindle.persistence.history import is_user_turn_boundary
from spindle.protocol.config import Config
from spindle.protocol.events import (
    ContextCompactedEvent,
    ItemCompletedEvent,
    ItemStartedEvent,
    TokenCountEvent,
    WarningEvent,
)
from spindle.protocol.ids import new_id
from spindle.protocol.items import ContextCompactionItem, InputText, Message, ResponseItem

from .journal import ThreadJournal
from .turn import CompactPhase, Turn, TurnHost, build_request, sample_with_retries
from .usage import UsageMeter

COMPACTION_PROMPT = """\
Your context is about to be compacted. Write a handoff summary for the model that will carry on \
this work from here: it will see your summary and the user's recent messages, and nothing else \
of this conversation.

Cover:
- what the user wants: the goal, and any constraints or preferences they stated;
- what has been done so far, and the decisions taken on the way;
- where things stand: files changed, commands run and what they showed, what still fails;
- what is left to do, as concrete next steps;
- the names, paths, values and snippets needed to continue.

Keep it short and structured; leave out whatever the next model will not need."""
"""The instructions the model gets, as the last user message, to write the summary."""

SUMMARY_PREFIX = (
    "Another language model started to solve this problem and produced a summary of its thinking "
    "process. You also have access to the state of the tools that were used by that language model. "
    "Use this to build on the work that has already been done and avoid duplicating work. Here is the "
    "summary produced by the other language model, use the information in this summary to  assist "
    "with your own analysis:"
)
"""Codex's words before a summary (`templates/compact/summary_prefix.md`), kept as they are so
that either one tells a summary from a message the user typed."""

HEADS_UP = (
    "Heads up: Long threads and multiple compactions can cause the model to be less accurate. Start "
    "a new thread when possible to keep threads small and targeted."
)
"""The warning after each compaction, as Codex words it."""

USER_MESSAGES_BUDGET = 20_000
"""How many tokens of the user's messages a compaction keeps (Codex's figure)."""

BYTES_PER_TOKEN = 4
"""The estimate of a token's size, as Codex makes it without a tokenizer."""

_encoder = msgspec.json.Encoder()


class CompactHost(TurnHost, Protocol):
    """What a compaction needs of its thread, besides the turn loop's needs."""

    journal: ThreadJournal
    usage: UsageMeter
    config: Config


class CompactTask:
    """A compaction as a turn of its own: no input, no agent message, a `contextCompaction` item."""

    kind = "compact"
    steerable = False

    async def run(self, turn: Turn, host: TurnHost) -> str | None:
        await host.compact(turn, "standalone")
        return None


COMPACT = CompactTask()


def auto_compact_limit(configured: int | None, window: int | None) -> int | None:
    """Codex's rule: the configured limit (`model_auto_compact_token_limit`, if positive), capped
    at 90% of the model's context window when that is known; None: no automatic compaction."""
    from_window = window * 9 // 10 if window else None
    limit = configured if configured is not None and configured > 0 else None
    if from_window is not None and limit is not None:
        return min(limit, from_window)
    return from_window if from_window is not None else limit


def has_turns(history: Sequence[ResponseItem]) -> bool:
    """Whether there is anything to compact: a message the user typed (or an earlier summary)."""
    return any(is_user_turn_boundary(item) for item in history)


async def run_compaction(turn: Turn, host: CompactHost, phase: CompactPhase) -> None:
    """Compact `host`'s history within `turn`; in a regular turn only when its context passed the
    auto-compact limit. Raises SamplingFailed (nothing changed) when the model cannot be sampled."""
    if phase != "standalone":
        limit = auto_compact_limit(host.config.model_auto_compact_token_limit, turn.settings.model_context_window)
        if limit is None or host.usage.context_tokens < limit:
            return
    item = ContextCompactionItem(id=new_id())
    host.emit(turn.sub_id, ItemStartedEvent(thread_id=host.thread_id, turn_id=turn.turn_id, item=item))
    prompt = Message(role="user", content=[InputText(text=COMPACTION_PROMPT)])
    sample = await sample_with_retries(turn, host, build_request(turn, host, prompt), quiet=True)
    answers = [entry for entry in sample.items if isinstance(entry, Message) and entry.role == "assistant"]
    summary = f"{SUMMARY_PREFIX}\n{answers[-1].text() if answers else ''}"
    replacement = compacted_history(host.history, summary)
    if phase == "mid_turn":  # the model expects the summary last, the initial context before the last request
        replacement = _with_context(replacement, host.journal.initial_context(turn.settings))
    window = turn.settings.model_context_window
    host.emit(turn.sub_id, TokenCountEvent(info=host.usage.estimate(estimate_tokens(replacement, turn), window)))
    host.journal.compact(replacement, summary)
    host.emit(turn.sub_id, ItemCompletedEvent(thread_id=host.thread_id, turn_id=turn.turn_id, item=item))
    host.emit(turn.sub_id, ContextCompactedEvent())
    host.emit(turn.sub_id, WarningEvent(message=HEADS_UP))
    if phase == "pre_turn":  # this turn goes on: it gives the initial context again, as the next would
        host.journal.seed_context(turn.settings)
    await host.journal.rollout.drain()


def compacted_history(history: Sequence[ResponseItem], summary: str, budget: int = USER_MESSAGES_BUDGET) -> list[ResponseItem]:
    """The history a compaction leaves: the user's messages (not injected context, not earlier
    summaries), as many of the newest as fit in `budget` tokens (the one that crosses it cut in
    the middle), in their order; then `summary`."""
    typed = [item.text() for item in history
             if isinstance(item, Message) and is_user_turn_boundary(item) and not is_summary(item)]
    kept: list[str] = []
    remaining = budget
    for text in reversed([text for text in typed if text]):
        if remaining <= 0:
            break
        tokens = approx_tokens(text)
        if tokens > remaining:
            kept.append(_truncated(text, remaining))
            break
        kept.append(text)
        remaining -= tokens
    return [*(_user(text) for text in reversed(kept)), _user(summary)]


def is_summary(item: object) -> bool:
    return isinstance(item, Message) and item.role == "user" and item.text().startswith(f"{SUMMARY_PREFIX}\n")


def approx_tokens(text: str) -> int:
    return (len(text.encode()) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def estimate_tokens(history: Sequence[ResponseItem], turn: Turn) -> int:
    """The size of a request with `history` (and the turn's instructions), as estimated."""
    size = len(_encoder.encode(history)) + len(turn.settings.instructions.encode())
    return (size + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _truncated(text: str, tokens: int) -> str:
    """`text` cut to about `tokens` tokens, its start and end kept, a marker in the middle."""
    keep = tokens * BYTES_PER_TOKEN
    head, tail = text[: keep // 2], text[len(text) - (keep - keep // 2):]
    return f"{head}\n…{approx_tokens(text) - tokens} tokens truncated…\n{tail}"


def _with_context(replacement: list[ResponseItem], context: list[ResponseItem]) -> list[ResponseItem]:
    """`context` put before the last user message of `replacement`, or before its summary."""
    at = max((i for i, item in enumerate(replacement) if not is_summary(item)), default=0)
    return [*replacement[:at], *context, *replacement[at:]]


def _user(text: str) -> Message:
    return Message(role="user", content=[InputText(text=text)])
