"""`review/start`: a review turn on the thread (`inline`), or on a new thread forked from it
(`detached`, as Codex 0.163 had it: announced with `thread/started`, and a `deprecationNotice`)."""

from __future__ import annotations

from spindle.actors.runtime import ThreadHandle
from spindle.actors.runtime.review import review_problem
from spindle.persistence.history import ForkSnapshot
from spindle.protocol.appserver import v2, v2review
from spindle.protocol.appserver.jsonrpc import invalid_request
from spindle.protocol.ops import ReviewOp
from spindle.protocol.review import ReviewRequest

from .context import RequestContext, dispatch, loaded, thread_id_param
from .views import live_thread

DETACHED_NOTICE = v2review.DeprecationNotice(
    summary="Detached review delivery is deprecated: start a thread with `thread/start`, then review it inline.",
    details="Codex 0.171 accepts only `inline`; Spindle still runs `detached` reviews on a forked thread.",
)


async def review_start(ctx: RequestContext, params: v2review.ReviewStartParams) -> v2review.ReviewStartResult:
    """Start a review turn and answer with the thread it runs on and its turn. An empty target
    or a cwd outside git is refused (-32600) before anything runs or is forked."""
    parent = loaded(ctx, thread_id_param(params.thread_id))
    try:
        target = params.target.cleaned()
    except ValueError as exc:
        raise invalid_request(str(exc)) from None
    request = ReviewRequest(target=target, user_facing_hint=target.hint())
    handle = parent
    if params.delivery == "detached":
        problem = await review_problem(request, parent.settings.cwd)
        if problem is not None:
            raise invalid_request(problem)
        handle = await _detached_thread(ctx, parent)
    ctx.peer.subscribe(handle)
    outcome = await dispatch(handle, ReviewOp(review_request=request))
    if outcome.turn_id is None:
        raise invalid_request("the review did not start")
    if handle is not parent:
        ctx.after(("deprecationNotice", DETACHED_NOTICE))
    return v2review.ReviewStartResult(
        review_thread_id=handle.thread_id, turn=v2.Turn(id=outcome.turn_id, items_view="notLoaded"))


async def _detached_thread(ctx: RequestContext, parent: ThreadHandle) -> ThreadHandle:
    """A fork of `parent` for the review, announced to this client before any of its events."""
    if not parent.rollout.persisted:
        raise invalid_request(f"thread {parent.thread_id} has no history to fork a detached review from yet; "
                              "run a turn first, or review it inline")
    handle = await ctx.manager.fork_thread(ForkSnapshot.interrupted(), parent.thread_id)
    await ctx.peer.notify("thread/started", v2.ThreadStarted(thread=await live_thread(ctx.manager, handle)))
    return handle
