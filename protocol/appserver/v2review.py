"""`review/start` on the app-server wire: its params and answer, and the deprecation notice a
detached review draws (as Codex 0.163 sent it)."""

from __future__ import annotations

from typing import Literal

from ..review import ReviewTarget
from .v2 import Turn
from .v2base import Inbound, Wire

ReviewDelivery = Literal["inline", "detached"]
"""`inline`: a review turn on the thread itself; `detached`: on a new thread forked from it
(Codex 0.163; 0.171 knows only `inline`)."""


class ReviewStartParams(Inbound, kw_only=True, frozen=True):
    thread_id: str
    target: ReviewTarget
    delivery: ReviewDelivery | None = None


class ReviewStartResult(Wire, kw_only=True):
    """The thread the review runs on (the one asked, or the detached one) and its review turn."""

    review_thread_id: str
    turn: Turn


class DeprecationNotice(Wire, kw_only=True):
    summary: str
    details: str | None = None
