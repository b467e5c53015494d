"""`thread/subscribe`, a Spindle extension (experimental): follow a loaded thread, as a retaining
subscriber or as an observer, and, coming back after a lost connection, from the last thread
event number (`threadSeq`) the client saw."""

from __future__ import annotations

from typing import Literal

from .v2base import Inbound, Wire


class ThreadSubscribeParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    after_seq: int | None = None
    """Replay the thread's events numbered after this one (the last `threadSeq` the client saw)."""
    observe: bool | None = None
    """Only observe: hear the thread without keeping it loaded."""


SubscribeStatus = Literal["subscribed", "replayed", "tooOld", "notLoaded"]
"""`subscribed`: from now on. `replayed`: the events after `afterSeq` come first. `tooOld`: they
are no longer all kept; subscribed from now on, re-read the thread (`thread/read`,
`thread/turns/list`). `notLoaded`: not subscribed; `thread/resume` loads it."""


class ThreadSubscribeResult(Wire, kw_only=True, omit_defaults=True):
    status: SubscribeStatus
    replayed: int | None = None
    """How many thread events are sent again (`replayed`)."""
    oldest_seq: int | None = None
    """The oldest event number still kept (`tooOld`)."""
    last_seq: int | None = None
    """The number of the thread's latest event when the subscription began."""
