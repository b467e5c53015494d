"""A long rollout, generated: many turns, with a `compacted` line every so often, for the
long-thread tests and `make bench`.

Each turn has the lines Spindle's writer puts down for a turn against the mock model
(`turn_context`, `task_started`, the user message and its events, the agent message and its
events, `token_count`, `task_complete`), encoded from the same structs, with ordinals in order.
Every `compact_every` turns a `compacted` line replaces the history with a summary and the
last few user messages, as a compaction does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from spindle.persistence.paths import now_utc, rollout_path, timestamp
from spindle.protocol.events import (
    AgentMessageEvent,
    ItemCompletedEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TokenCountEvent,
    TokenUsage,
    TokenUsageInfo,
    UserMessageEvent,
)
from spindle.protocol.ids import new_id
from spindle.protocol.items import (
    AgentMessageContent,
    AgentMessageItem,
    InputText,
    Message,
    OutputText,
    TextInput,
    UserMessageItem,
)
from spindle.protocol.rollout import (
    CompactedItem,
    RolloutItem,
    RolloutLineOut,
    SandboxPolicy,
    SessionMeta,
    TurnContextItem,
    line_type,
)

KEPT_USER_MESSAGES = 3
"""User messages a generated compaction keeps beside its summary."""
BATCH_LINES = 4096

_encoder = msgspec.json.Encoder()
_USAGE = TokenUsage(input_tokens=1200, cached_input_tokens=1000, output_tokens=34, reasoning_output_tokens=5,
                    total_tokens=1234)


@dataclass(frozen=True)
class LongRollout:
    thread_id: str
    path: Path
    turn_ids: list[str]
    """Every turn, oldest first."""
    compactions: int


def user_text(n: int) -> str:
    return f"turn {n}: please look at the next part of the task"


def _turn(thread_id: str, turn_id: str, n: int, cwd: str) -> list[RolloutItem]:
    text, answer = user_text(n), f"echo: {user_text(n)}"
    return [
        TurnContextItem(cwd=cwd, approval_policy="never", model="mock-model", turn_id=turn_id,
                        sandbox_policy=SandboxPolicy(type="danger-full-access")),
        TaskStartedEvent(turn_id=turn_id),
        Message(role="user", content=[InputText(text=text)]),
        ItemCompletedEvent(thread_id=thread_id, turn_id=turn_id,
                           item=UserMessageItem(id=f"{turn_id}-u", content=[TextInput(text=text)])),
        UserMessageEvent(message=text),
        ItemCompletedEvent(thread_id=thread_id, turn_id=turn_id,
                           item=AgentMessageItem(id=f"{turn_id}-a", content=[AgentMessageContent(text=answer)])),
        AgentMessageEvent(message=answer),
        TokenCountEvent(info=TokenUsageInfo(total_token_usage=_USAGE, last_token_usage=_USAGE)),
        Message(role="assistant", content=[OutputText(text=answer)], id=f"{turn_id}-a", status="completed"),
        TaskCompleteEvent(turn_id=turn_id, last_agent_message=answer),
    ]


def compaction(last_turn: int) -> CompactedItem:
    """What a compaction after turn `last_turn` writes: a summary, the last user messages kept."""
    summary = f"Summary of the conversation through turn {last_turn}."
    kept = [Message(role="user", content=[InputText(text=user_text(n))])
            for n in range(max(0, last_turn - KEPT_USER_MESSAGES + 1), last_turn + 1)]
    return CompactedItem(message=summary, replacement_history=[*kept, Message(role="user", content=[InputText(text=summary)])])


def _items(meta: SessionMeta, turn_ids: list[str], compact_every: int) -> Iterator[RolloutItem]:
    yield meta
    yield Message(role="user", content=[InputText(text=f"<environment_context>\n  <cwd>{meta.cwd}</cwd>\n</environment_context>")])
    for n, turn_id in enumerate(turn_ids):
        yield from _turn(meta.id, turn_id, n, meta.cwd)
        if compact_every and (n + 1) % compact_every == 0:
            yield compaction(n)


def write_long_rollout(home: Path, *, turns: int, compact_every: int = 0, cwd: str = "/tmp",
                       model_provider: str = "mock") -> LongRollout:
    """Write a rollout of `turns` turns under `home/sessions/`, compacted every `compact_every` turns,
    made with `model_provider` (Codex resumes a thread only with its provider configured)."""
    created = now_utc()
    thread_id = new_id()
    meta = SessionMeta(id=thread_id, session_id=thread_id, timestamp=timestamp(created), cwd=cwd,
                       cli_version="0.1.0", model_provider=model_provider)
    path = rollout_path(home, thread_id, created)
    path.parent.mkdir(parents=True, exist_ok=True)
    turn_ids = [new_id() for _ in range(turns)]
    stamp = timestamp(created)
    buffer = bytearray()
    with open(path, "wb") as out:
        for ordinal, item in enumerate(_items(meta, turn_ids, compact_every)):
            buffer += _encoder.encode(RolloutLineOut(timestamp=stamp, ordinal=ordinal, type=line_type(item), payload=item))
            buffer += b"\n"
            if len(buffer) > BATCH_LINES * 256:
                out.write(buffer)
                buffer.clear()
        out.write(buffer)
    return LongRollout(thread_id, path, turn_ids, turns // compact_every if compact_every else 0)
