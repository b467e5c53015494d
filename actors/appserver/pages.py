"""Pages of a thread's history: which turns and items `thread/turns/list` and `thread/items/list`
answer, and their cursors, over any `TurnSource`.

A turn cursor names the thread and a turn (and whether a page starting from it includes it); an
item cursor names the thread, the turn filter of its listing, a turn and an item's place in it.
`nextCursor` continues after a page's last entry in the same direction; `backwardsCursor` names
its first entry, included again when sent with the opposite direction. A cursor made for another
thread, another listing or another turn filter, one whose turn was rolled back, or garbage, is
`InvalidCursor` (the app-server answers -32602). Both use the one cursor codec
(`spindle.persistence.cursors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from spindle.persistence.cursors import InvalidCursor, decode_cursor, encode_cursor
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.v2items import (
    AgentMessageThreadItem,
    CommandExecutionThreadItem,
    McpToolCallThreadItem,
    ThreadItem,
    UserMessageThreadItem,
)
from spindle.protocol.appserver.v2pages import ItemAnchor, ThreadItemOutputDeferral, TurnItemsView

DEFAULT_PAGE = 25
MAX_PAGE = 100
"""Turns or items in one page: Codex's default and bound (a limit past it is clamped)."""
TURNS_PER_READ = 16
"""Turns an item listing loads at a time while it walks the thread."""


class TurnSource(Protocol):
    """A thread's visible turns (rolled-back ones left out), oldest first."""

    @property
    def turn_ids(self) -> Sequence[str]: ...

    async def turns(self, positions: Sequence[int]) -> list[v2.Turn]:
        """The turns at `positions` (indices into `turn_ids`), with all their items, in that order."""
        ...


@dataclass(frozen=True)
class TurnPage:
    positions: list[int]
    next_cursor: str | None
    backwards_cursor: str | None


@dataclass(frozen=True)
class ItemEntry:
    turn_id: str
    index: int
    item: ThreadItem


@dataclass(frozen=True)
class ItemPage:
    entries: list[ItemEntry]
    next_cursor: str | None
    backwards_cursor: str | None


def page_size(limit: int | None) -> int:
    return max(1, min(DEFAULT_PAGE if limit is None else limit, MAX_PAGE))


def _turn_cursor(thread_id: str, turn_id: str, *, include: bool) -> str:
    return encode_cursor("turns", thread_id, turn_id, include)


def turn_page(thread_id: str, ids: Sequence[str], *, cursor: str | None, limit: int | None, ascending: bool) -> TurnPage:
    """The positions of the turns one page holds, in its order, and its cursors."""
    order = range(len(ids)) if ascending else range(len(ids) - 1, -1, -1)
    if cursor:
        kind, thread, turn_id, include = decode_cursor(cursor, tuple[str, str, str, bool])
        if kind != "turns":
            raise InvalidCursor(f"invalid cursor {cursor!r}: it was made for another listing")
        _same_thread(thread, thread_id)
        at = _position(ids, turn_id)
        start = at if include else at + (1 if ascending else -1)
        order = range(start, len(ids)) if ascending else range(start, -1, -1)
    size = page_size(limit)
    picked = list(order[: size + 1])
    page = picked[:size]
    if not page:
        return TurnPage([], None, None)
    more = len(picked) > size
    return TurnPage(page, _turn_cursor(thread_id, ids[page[-1]], include=False) if more else None,
                    _turn_cursor(thread_id, ids[page[0]], include=True))


def _same_thread(thread: str, thread_id: str) -> None:
    if thread != thread_id:
        raise InvalidCursor(f"invalid cursor: it was made for another thread ({thread}), not {thread_id}")


def _position(ids: Sequence[str], turn_id: str) -> int:
    try:
        return ids.index(turn_id)
    except ValueError:
        raise InvalidCursor(f"invalid cursor: anchor turn {turn_id} is no longer present") from None


def with_view(turn: v2.Turn, view: TurnItemsView) -> v2.Turn:
    """`turn` with the items `view` shows: none, a summary (its first user message and its last
    agent message, as Codex's summary), or all of them."""
    turn.items_view = view
    if view == "notLoaded":
        turn.items = []
    elif view == "summary":
        user = next((item for item in turn.items if isinstance(item, UserMessageThreadItem)), None)
        agent = next((item for item in reversed(turn.items) if isinstance(item, AgentMessageThreadItem)), None)
        turn.items = [item for item in (user, agent) if item is not None]
    return turn


def defer_output(item: ThreadItem, deferral: ThreadItemOutputDeferral | None) -> tuple[ThreadItem, bool]:
    """`item` without the saved output `deferral` asks to leave out (the nonempty output of a
    successful command or MCP call), and whether it was left out."""
    if deferral is None:
        return item, False
    if deferral.command_execution and isinstance(item, CommandExecutionThreadItem):
        if item.status == "completed" and item.aggregated_output:
            return msgspec.structs.replace(item, aggregated_output=None), True
    if deferral.mcp_tool_call and isinstance(item, McpToolCallThreadItem):
        if item.status == "completed" and item.result:
            return msgspec.structs.replace(item, result=None), True
    return item, False


def _item_cursor(thread_id: str, only: str | None, entry: ItemEntry, *, include: bool) -> str:
    return encode_cursor("items", thread_id, only or "", entry.turn_id, entry.index, include)


async def item_page(
    thread_id: str, source: TurnSource, *, turn_id: str | None, cursor: str | ItemAnchor | None,
    limit: int | None, ascending: bool,
) -> ItemPage:
    """One page of items, across the thread or of the turn `turn_id`, walking the turns from the
    cursor's place and loading them `TURNS_PER_READ` at a time."""
    ids = source.turn_ids
    if turn_id is not None:
        if turn_id not in ids:
            raise InvalidCursor(f"turn {turn_id} not found in thread {thread_id}")
        positions = [ids.index(turn_id)]
    else:
        positions = list(range(len(ids)))
    walk, first_index = await _start(thread_id, source, positions, turn_id, cursor, ascending)
    size = page_size(limit)
    entries: list[ItemEntry] = []
    for batch in _batches(walk, TURNS_PER_READ):
        for turn in await source.turns(batch):
            items = list(enumerate(turn.items))
            if first_index is not None:
                items = items[first_index:] if ascending else items[: first_index + 1]
                first_index = None
            entries += (ItemEntry(turn.id, n, item) for n, item in (items if ascending else reversed(items)))
        if len(entries) > size:
            break
    page, more = entries[:size], len(entries) > size
    if not page:
        return ItemPage([], None, None)
    return ItemPage(page, _item_cursor(thread_id, turn_id, page[-1], include=False) if more else None,
                    _item_cursor(thread_id, turn_id, page[0], include=True))


async def _start(
    thread_id: str, source: TurnSource, positions: list[int], only: str | None, cursor: str | ItemAnchor | None,
    ascending: bool,
) -> tuple[list[int], int | None]:
    """The turn positions to walk, in order, and where in the first one to start (None: its
    first item, or its last when descending)."""
    if cursor is None or cursor == "":
        return (positions if ascending else positions[::-1]), None
    ids = source.turn_ids
    if isinstance(cursor, ItemAnchor):
        if only is None:
            raise InvalidCursor("an item anchor needs a non-empty turnId")
        [turn] = await source.turns(positions)
        at = next((n for n, item in enumerate(turn.items) if item.id == cursor.item_id), None)
        if at is None:
            raise InvalidCursor(f"item {cursor.item_id} not found in turn {only}")
        turn_at, index = positions[0], at + (1 if ascending else -1)
    else:
        kind, thread, made_for, turn_id, at, include = decode_cursor(cursor, tuple[str, str, str, str, int, bool])
        if kind != "items":
            raise InvalidCursor(f"invalid cursor {cursor!r}: it was made for another listing")
        _same_thread(thread, thread_id)
        if made_for != (only or ""):
            raise InvalidCursor("invalid cursor: it was made for another turnId")
        turn_at = _position(ids, turn_id)
        index = at if include else at + (1 if ascending else -1)
    rest = [p for p in positions if (p >= turn_at if ascending else p <= turn_at)]
    if not ascending:
        rest.reverse()
    if index < 0:  # before the anchor's turn: the walk starts at the turn before it
        return rest[1:], None
    return rest, index


def _batches(positions: list[int], n: int) -> list[list[int]]:
    return [positions[i : i + n] for i in range(0, len(positions), n)]
