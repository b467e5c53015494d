"""Rebuilding a thread's turns (the app-server's `Turn` objects) from its rollout items, read
from the rollout file through its turn index, on demand and off the event loop (`IndexedTurns`)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

import trio

from spindle.persistence.reader import read_rollout
from spindle.persistence.source import RolloutSource, iter_items
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.v2map import review_item, thread_item, turn_error
from spindle.protocol.events import (
    AgentMessageEvent,
    ContextCompactedEvent,
    EnteredReviewModeEvent,
    ErrorEvent,
    ExitedReviewModeEvent,
    ItemCompletedEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    ThreadRolledBackEvent,
    TurnAbortedEvent,
    UserMessageEvent,
)
from spindle.protocol.items import (
    AgentMessageContent,
    AgentMessageItem,
    ContextCompactionItem,
    ImageInput,
    LocalImageInput,
    TextInput,
    TurnItem,
    UserInput,
    UserMessageItem,
)
from spindle.protocol.rollout import RolloutItem


def build_turns(items: Iterable[RolloutItem], *, live_turn_id: str | None = None) -> list[v2.Turn]:
    """One Turn per `task_started`, with its user and agent messages, its review items (from
    `entered_review_mode` / `exited_review_mode`, as Codex rebuilds them), and how it ended.

    A turn's messages come from its `item_completed` events; a turn that has none (written by
    Codex in its legacy history mode) takes them from its `user_message`, `agent_message` and
    `context_compacted` events instead. Rollbacks drop turns as they dropped history. A turn with no end that is not `live_turn_id`
    (the process stopped mid-turn) is reported `interrupted`.
    """
    turns: list[v2.Turn] = []
    by_id: dict[str, v2.Turn] = {}
    legacy: dict[str, list[TurnItem]] = {}
    itemized: set[str] = set()
    opened = 0
    """Where the last turn's `task_started` is: a legacy item's id counts from it, so the same
    item has the same id whatever span of the rollout it is read from."""
    for n, item in enumerate(items):
        match item:
            case TaskStartedEvent(turn_id=turn_id):
                turn = v2.Turn(id=turn_id)
                turns.append(turn)
                by_id[turn_id] = turn
                opened = n
            case UserMessageEvent() | AgentMessageEvent() | ContextCompactedEvent() if turns:
                legacy.setdefault(turns[-1].id, []).append(_legacy_item(item, f"{turns[-1].id}-{n - opened}"))
            case EnteredReviewModeEvent() | ExitedReviewModeEvent() if turns:
                turns[-1].items.append(review_item(item, turns[-1].id))
            case ItemCompletedEvent(turn_id=turn_id, item=turn_item):
                if (owner := by_id.get(turn_id)) is not None:
                    owner.items.append(thread_item(turn_item))
                    itemized.add(turn_id)
            case TaskCompleteEvent(turn_id=turn_id):
                if (owner := by_id.get(turn_id)) is not None:
                    owner.status = "failed" if owner.error is not None else "completed"
            case TurnAbortedEvent(turn_id=turn_id):
                if turn_id is not None and (owner := by_id.get(turn_id)) is not None:
                    owner.status = "interrupted"
            case ErrorEvent(turn_id=turn_id) if turn_id is not None:
                if (owner := by_id.get(turn_id)) is not None:
                    owner.error = turn_error(item.message, item.codex_error_info)
            case ThreadRolledBackEvent(num_turns=dropped):
                del turns[max(0, len(turns) - dropped):]
    for turn in turns:
        if turn.status == "inProgress" and turn.id != live_turn_id:
            turn.status = "interrupted"
        if turn.id not in itemized and turn.id in legacy:  # after its review items, if any
            turn.items += [thread_item(message) for message in legacy[turn.id]]
    return turns


class IndexedTurns:
    """The visible turns of a rollout source, each built from its own lines when asked for
    (`TurnSource`); `live_turn_id` is the turn running now, if any."""

    def __init__(self, source: RolloutSource, live_turn_id: str | None = None) -> None:
        self._source = source
        self._live = live_turn_id
        self.index = source.index
        self.turn_ids: Sequence[str] = source.index.ids

    async def turns(self, positions: Sequence[int]) -> list[v2.Turn]:
        if not positions:
            return []
        wanted = {self.turn_ids[p]: n for n, p in enumerate(positions)}
        read = self._source.read_turns(positions)

        def build() -> list[v2.Turn]:  # streamed and built off the event loop: a long span is never held whole
            found = [turn for turn in build_turns(iter_items(read), live_turn_id=self._live) if turn.id in wanted]
            return sorted(found, key=lambda turn: wanted[turn.id])

        return await trio.to_thread.run_sync(build)

    async def all(self) -> list[v2.Turn]:
        return await self.turns(range(len(self.turn_ids))) if self.turn_ids else []


async def stored_turns(path: Path) -> IndexedTurns:
    """The turns of a rollout file no thread has loaded: its index, from a streaming scan."""
    read = await trio.to_thread.run_sync(functools.partial(read_rollout, path, history=False))
    return IndexedTurns(read.source)


def _legacy_item(event: UserMessageEvent | AgentMessageEvent | ContextCompactedEvent, item_id: str) -> TurnItem:
    if isinstance(event, ContextCompactedEvent):
        return ContextCompactionItem(id=item_id)
    if isinstance(event, AgentMessageEvent):
        return AgentMessageItem(id=item_id, content=[AgentMessageContent(text=event.message)])
    content: list[UserInput] = [TextInput(text=event.message)] if event.message else []
    content += [ImageInput(image_url=url) for url in event.images]
    content += [LocalImageInput(path=path) for path in event.local_images]
    return UserMessageItem(id=item_id, content=content)
