"""Paginated thread history on the app-server wire: `thread/turns/list`, `thread/items/list` and
`thread/items/read` (experimental), as Codex 0.171's schema defines them."""

from __future__ import annotations

from typing import Literal

import msgspec

from .v2 import Turn
from .v2base import Inbound, Wire
from .v2items import ThreadItem

SortDirection = Literal["asc", "desc"]
TurnItemsView = Literal["notLoaded", "summary", "full"]


class ThreadTurnsListParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    cursor: str | None = None
    limit: int | None = None
    sort_direction: SortDirection | None = None
    """Default `desc`: newest turn first."""
    items_view: TurnItemsView | None = None
    """Default `summary`: the first user message and the last agent message of each turn."""


class ItemAnchor(Inbound, tag_field="type", tag="item", kw_only=True, frozen=True):
    """An exclusive position in the turn `turnId` names: the items after it (ascending), or
    before it (descending)."""

    item_id: str


class ThreadItemOutputDeferral(Inbound, kw_only=True, frozen=True):
    """Which saved outputs to leave out of a page (fetched later with `thread/items/read`)."""

    command_execution: bool = False
    mcp_tool_call: bool = False


class ThreadItemsListParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    turn_id: str | None = None
    cursor: str | ItemAnchor | None = None
    limit: int | None = None
    sort_direction: SortDirection | None = None
    """Default `asc`: oldest item first."""
    defer_output: ThreadItemOutputDeferral | None = None


class ThreadItemsReadParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    turn_id: str
    item_ids: list[str] = msgspec.field(default_factory=list)


class ThreadItemEntry(Wire, kw_only=True):
    turn_id: str
    item: ThreadItem
    output_deferred: bool | msgspec.UnsetType = msgspec.UNSET
    started_at_ms: int | None = None
    completed_at_ms: int | None = None


class ThreadTurnsListResult(Wire, kw_only=True):
    data: list[Turn]
    next_cursor: str | None = None
    backwards_cursor: str | None = None


class ThreadItemsListResult(Wire, kw_only=True):
    data: list[ThreadItemEntry]
    next_cursor: str | None = None
    backwards_cursor: str | None = None


class ThreadItemsReadResult(Wire, kw_only=True):
    data: list[ThreadItemEntry]
