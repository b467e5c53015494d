"""What a method handler gets: the manager, the client that asked, the server's subscriber index,
and the notifications the method causes (sent after its answer, in order)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from spindle.actors.runtime import SubmissionOutcome, ThreadHandle, ThreadManager
from spindle.protocol.appserver.jsonrpc import Handshake, invalid_request
from spindle.protocol.ids import parse_thread_id
from spindle.protocol.ops import Op

from .idempotency import Answers
from .notify import Notice


class Peer(Protocol):
    """One connected client, as handlers see it."""

    handshake: Handshake

    def subscribe(self, handle: ThreadHandle, *, observe: bool = False, after: int | None = None) -> int:
        """Send this client the thread's events from now (or from the one after `after`) until it
        ends or is unsubscribed; retaining the thread unless it only `observe`s (see `Connection`)."""

    def is_subscribed(self, thread_id: str) -> bool: ...

    def retains(self, thread_id: str) -> bool:
        """Whether its subscription to `thread_id` keeps the thread loaded."""

    def end_subscription(self, thread_id: str) -> None: ...

    def notify_nowait(self, method: str, params: object) -> None: ...

    async def notify(self, method: str, params: object) -> None:
        """Send a notification now, before the answer (waiting while the client's queue is full)."""


class SubscriberIndex(Protocol):
    """Who is subscribed to which thread, across all clients of one server."""

    def subscribers(self, thread_id: str) -> Collection[Peer]: ...

    answers: Answers
    """The answers to requests with an idempotency key."""

    def unsubscribe(self, peer: Peer, thread_id: str) -> bool: ...

    def hold(self, thread_id: str) -> None:
        """A client now retains `thread_id`: it is not unloaded."""

    def let_go(self, peer: Peer, thread_id: str) -> None:
        """`peer` no longer retains `thread_id`: it unloads once idle, if no one else retains it."""

    def claim(self, method: str, thread_id: str | None) -> AbstractAsyncContextManager[None]:
        """Hold off unloading the thread a request names while it runs (see `AppServer.claim`)."""

    def drop_subscribers(self, thread_id: str) -> None: ...

    def register_tools(self, thread_id: str, peer: Peer) -> None:
        """`peer` registered the thread's dynamic tools: their calls go to it."""

    def tool_owner(self, thread_id: str) -> Peer | None:
        """The one client that runs the thread's dynamic tools (see `AppServer.tool_owner`)."""


@dataclass
class RequestContext:
    manager: ThreadManager
    peer: Peer
    index: SubscriberIndex
    notices: list[tuple[Notice, Iterable[Peer]]] = field(default_factory=list)

    def after(self, notice: Notice, *, also: Iterable[Peer] = ()) -> None:
        """Send `notice`, to this client and to `also`, once the answer to this request is out."""
        self.notices.append((notice, also))


def thread_id_param(raw: str) -> str:
    try:
        return parse_thread_id(raw)
    except ValueError as exc:
        raise invalid_request(str(exc)) from None


def loaded(ctx: RequestContext, thread_id: str) -> ThreadHandle:
    """The running thread `thread_id`; the request is refused if it is not loaded."""
    handle = ctx.manager.running(thread_id)
    if handle is None:
        raise invalid_request(f"thread not found: {thread_id}")
    return handle


async def dispatch(handle: ThreadHandle, op: Op) -> SubmissionOutcome:
    """Submit `op` and wait until the actor has dispatched it; the error it drew becomes the answer."""
    outcome = await handle.submit_and_wait(op)
    if outcome.error is not None:
        raise invalid_request(outcome.error.message)
    return outcome
