"""Forking a rollout without holding it: the fork's file is the source's lines up to a cut, copied
as bytes, after the fork's own `session_meta`, then the few items the snapshot adds.

`plan_fork` finds the cut (`ForkSnapshot`'s rules, as `history.fork_items` applies them to items
in memory) by streaming the source file, and `write_fork` writes the new file; both block (run
them in a worker thread). Copied lines keep their ordinals; the added ones continue from the
source's next ordinal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from spindle.protocol.events import TurnAbortedEvent
from spindle.protocol.items import ResponseItemBase, close_dangling_calls, turn_aborted_marker
from spindle.protocol.rollout import RolloutItem, RolloutLineOut, SessionMeta, line_type

from .history import ForkSnapshot, is_user_turn_boundary
from .paths import timestamp
from .reader import line_head
from .source import SpanRead, decode_items, read_items

COPY_CHUNK = 1 << 20
"""Bytes copied at a time."""

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class ActiveTurn:
    """The turn the source is in the middle of: its id and where its lines begin."""

    turn_id: str
    start: int


@dataclass(frozen=True)
class ForkPlan:
    source: Path
    body: int
    """Where the source's lines after its `session_meta` begin."""
    cut: int
    """Where the copy stops (exclusive)."""
    extra: list[RolloutItem]
    next_ordinal: int


def plan_fork(path: Path, end: int, snapshot: ForkSnapshot, active: ActiveTurn | None, next_ordinal: int) -> ForkPlan:
    """The fork of the first `end` bytes of `path` that `snapshot` asks for."""
    with open(path, "rb") as file:
        body = len(file.readline())
    if snapshot.cut is not None:
        return ForkPlan(path, body, max(min(snapshot.cut, end), body), [], next_ordinal)
    if snapshot.nth_user_message is not None:
        cut = _nth_turn_start(path, body, end, snapshot.nth_user_message)
        if cut is None:
            cut = active.start if active is not None else end
        return ForkPlan(path, body, max(cut, body), [], next_ordinal)
    if active is None:
        return ForkPlan(path, body, end, [], next_ordinal)
    last = read_items(SpanRead(path, active.start, end, []))
    calls = [item for item in last if isinstance(item, ResponseItemBase)]
    extra: list[RolloutItem] = [*close_dangling_calls(calls), turn_aborted_marker(),  # type: ignore[list-item]
                                TurnAbortedEvent(turn_id=active.turn_id, reason="interrupted")]
    return ForkPlan(path, body, end, extra, next_ordinal)


def _nth_turn_start(path: Path, body: int, end: int, n: int) -> int | None:
    """Where the turn holding the `n`th (0-based) user message begins: the first of the
    `turn_context` / `task_started` lines right before it, else the message's own line. None if
    the first `end` bytes hold fewer."""
    seen, offset, opening = 0, body, None
    with open(path, "rb") as file:
        file.seek(body)
        for raw in file:
            if offset + len(raw) > end:
                break
            head = line_head(raw)
            if head is not None and (head.type == "turn_context" or head.payload.type == "task_started"):
                opening = offset if opening is None else opening
            else:
                if head is not None and head.type == "response_item" and b'"user"' in raw:
                    items, _ = decode_items(raw)
                    if items and is_user_turn_boundary(items[0]):
                        if seen == n:
                            return opening if opening is not None else offset
                        seen += 1
                opening = None
            offset += len(raw)
    return None


def write_fork(plan: ForkPlan, path: Path, meta: SessionMeta) -> None:
    """Create the fork's file at `path`: its `session_meta`, the copied lines, the added items.
    The file is synced before this returns; a failure leaves no file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = timestamp()
    lines = [RolloutLineOut(timestamp=stamp, ordinal=0, type="session_meta", payload=meta)]
    lines += [RolloutLineOut(timestamp=stamp, ordinal=plan.next_ordinal + n, type=line_type(item), payload=item)
              for n, item in enumerate(plan.extra)]
    head, *added = (_encoder.encode(line) + b"\n" for line in lines)
    try:
        with open(path, "xb") as out, open(plan.source, "rb") as source:
            out.write(head)
            source.seek(plan.body)
            _copy(source, out, plan.cut - plan.body)
            out.write(b"".join(added))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _copy(source: BinaryIO, out: BinaryIO, size: int) -> None:
    remaining = size
    while remaining > 0:
        chunk = source.read(min(COPY_CHUNK, remaining))
        if not chunk:
            break
        out.write(chunk)
        remaining -= len(chunk)
