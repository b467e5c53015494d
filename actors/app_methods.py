"""The app-server's method handlers: v2 params in, v2 results out, on the thread manager.

Each handler takes the connection that asked and its decoded params, returns the result struct
or raises `RpcError`. Notifications a method causes (`thread/started`, `thread/archived`, ...)
are sent by the handler after its result, in the order the real app-server sends them.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from persistence.history import ForkSnapshot
from persistence.reader import RolloutReadError, read_rollout
from persistence.store import ThreadEntry, ThreadStoreError, preview_of
from persistence.turns import build_turns
from protocol import v2
from protocol.ids import parse_thread_id
from protocol.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, RpcError, invalid_request
from protocol.ops import CompactOp, InterruptOp, Op, ThreadRollbackOp, UserInputOp, UserTurnOp
from protocol.v2map import (
    UnsupportedInput,
    approval_policy,
    sandbox_out,
    sandbox_policy,
    user_inputs,
)

from .config import ConfigError
from .handle import ThreadHandle
from .thread import Receipt

if TYPE_CHECKING:
    from .app_server import AppServer, Connection

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = "0.163.0"
"""The Codex app-server protocol version Spindle implements (the SDK gates fields on it)."""
DEFAULT_PAGE = 50
MAX_PAGE = 500

Handler = Callable[["AppServer", "Connection", Any], Awaitable[Any]]

DOMAIN_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (ThreadStoreError, INVALID_REQUEST),
    (RolloutReadError, INVALID_REQUEST),
    (ConfigError, INVALID_PARAMS),
    (UnsupportedInput, INVALID_PARAMS),
)
"""Spindle's own errors as JSON-RPC errors: a state the request cannot act on, or params it cannot use."""


def rpc_error(exc: Exception) -> RpcError | None:
    """`exc` as the error answer to a request, if it is one of Spindle's own errors."""
    for kind, code in DOMAIN_ERRORS:
        if isinstance(exc, kind):
            return RpcError(code, str(exc))
    return None


def _epoch(stamp: str) -> int:
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return int(time.time())


def _thread_id(raw: str) -> str:
    try:
        return parse_thread_id(raw)
    except ValueError as exc:
        raise invalid_request(str(exc)) from None


def _loaded(server: AppServer, thread_id: str) -> ThreadHandle:
    handle = server.manager.running(thread_id)
    if handle is None:
        raise invalid_request(f"thread not found: {thread_id}")
    return handle


async def _call(handle: ThreadHandle, op: Op) -> Receipt:
    """Submit `op` and wait for the actor's receipt; the error the op drew becomes the answer."""
    receipt = await handle.call(op)
    if receipt.error is not None:
        raise invalid_request(receipt.error.message)
    return receipt


# --- thread objects ---------------------------------------------------------


def live_thread(server: AppServer, handle: ThreadHandle, *, include_turns: bool = False) -> v2.Thread:
    rollout = handle.rollout
    meta = rollout.meta
    settings = handle.settings
    store = server.manager.store
    entry = store.entry(handle.thread_id) if rollout.persisted else None
    turns = build_turns(rollout.source.iter_forward_from(0), live_turn_id=handle.active_turn_id) if include_turns else []
    created = _epoch(meta.timestamp)
    return v2.Thread(
        id=handle.thread_id, session_id=handle.thread_id, forked_from_id=meta.forked_from_id,
        preview=entry.preview if entry else preview_of(rollout.source.iter_forward_from(0)), ephemeral=rollout.ephemeral,
        model_provider=settings.provider_id, model=settings.model, created_at=created,
        updated_at=_epoch(entry.updated_at) if entry else created,
        status=v2.active_status() if handle.active_turn_id else v2.IDLE,
        path=None if rollout.ephemeral else str(rollout.path), cwd=settings.cwd,
        cli_version=meta.cli_version, name=entry.name if entry else store.name(handle.thread_id), turns=turns,
    )


def stored_thread(server: AppServer, entry: ThreadEntry, *, include_turns: bool = False) -> v2.Thread:
    running = server.manager.running(entry.id)
    if running is not None:
        return live_thread(server, running, include_turns=include_turns)
    turns: list[v2.Turn] = []
    cli_version = ""
    if include_turns:
        try:
            read = read_rollout(Path(entry.path))
        except (OSError, RolloutReadError) as exc:
            raise invalid_request(f"cannot read rollout {entry.path}: {exc}") from None
        turns = build_turns(read.source.iter_forward_from(0))
        cli_version = read.meta.cli_version
    return v2.Thread(
        id=entry.id, session_id=entry.id, forked_from_id=entry.forked_from_id, preview=entry.preview,
        ephemeral=False, model_provider=entry.model_provider, model=None,
        created_at=_epoch(entry.created_at), updated_at=_epoch(entry.updated_at), status=v2.NOT_LOADED,
        path=entry.path, cwd=entry.cwd, cli_version=cli_version, name=entry.name, turns=turns,
    )


def session_result(server: AppServer, handle: ThreadHandle, *, include_turns: bool) -> v2.ThreadSessionResult:
    s = handle.settings
    return v2.ThreadSessionResult(
        thread=live_thread(server, handle, include_turns=include_turns), model=s.model,
        model_provider=s.provider_id, cwd=s.cwd, approval_policy=s.approval_policy,
        approvals_reviewer="user", sandbox=sandbox_out(s.sandbox_policy), reasoning_effort=s.effort,
    )


def _overrides(params: v2.ThreadSettingsParams) -> dict[str, Any]:
    policy = approval_policy(params.approval_policy)
    cwd = params.cwd
    if cwd is not None and not os.path.isabs(cwd):
        cwd = os.path.abspath(cwd)
    values = {
        "model": params.model, "model_provider": params.model_provider, "cwd": cwd,
        "approval_policy": policy, "sandbox_mode": params.sandbox, "instructions": params.base_instructions,
    }
    return {key: value for key, value in values.items() if value is not None}


# --- handlers ---------------------------------------------------------------


async def initialize(server: AppServer, conn: Connection, params: v2.InitializeParams) -> v2.InitializeResult:
    conn.handshake.done(params)
    client = params.client_info
    agent = (
        f"spindle/{PROTOCOL_VERSION} (spindle {server.version}; {platform.system()} {platform.release()}; "
        f"{platform.machine()}) ({client.name}; {client.version})"
    )
    return v2.InitializeResult(
        user_agent=agent, codex_home=str(server.manager.home),
        platform_family="windows" if os.name == "nt" else "unix", platform_os=platform.system().lower(),
    )


async def thread_start(server: AppServer, conn: Connection, params: v2.ThreadStartParams) -> v2.ThreadSessionResult:
    handle = await server.manager.start_thread(ephemeral=bool(params.ephemeral), **_overrides(params))
    server.subscribe(conn, handle)
    result = session_result(server, handle, include_turns=False)
    conn.after(("thread/started", v2.ThreadStarted(thread=result.thread)))
    return result


async def thread_resume(server: AppServer, conn: Connection, params: v2.ThreadResumeParams) -> v2.ThreadSessionResult:
    tid = _thread_id(params.thread_id)
    handle = await server.manager.resume_thread(tid, path=params.path, **_overrides(params))
    server.subscribe(conn, handle)
    return session_result(server, handle, include_turns=not params.exclude_turns)


async def thread_fork(server: AppServer, conn: Connection, params: v2.ThreadForkParams) -> v2.ThreadSessionResult:
    tid = _thread_id(params.thread_id)
    snapshot = ForkSnapshot.interrupted()
    if params.last_turn_id is not None:
        snapshot = await _snapshot_through(server, tid, params.last_turn_id)
    handle = await server.manager.fork_thread(snapshot, tid, path=params.path, **_overrides(params))
    server.subscribe(conn, handle)
    result = session_result(server, handle, include_turns=not params.exclude_turns)
    conn.after(("thread/started", v2.ThreadStarted(thread=live_thread(server, handle))))
    return result


async def _snapshot_through(server: AppServer, thread_id: str, last_turn_id: str) -> ForkSnapshot:
    ids = await _turn_ids(server, thread_id)
    if last_turn_id not in ids:
        raise invalid_request(f"turn {last_turn_id} not found in thread {thread_id}")
    return ForkSnapshot.truncate_before(ids.index(last_turn_id) + 1)


async def _turn_ids(server: AppServer, thread_id: str) -> list[str]:
    """The ids of a thread's turns, oldest first: from memory when it runs, else from its rollout."""
    running = server.manager.running(thread_id)
    if running is not None:
        turns = build_turns(running.rollout.source.iter_forward_from(0), live_turn_id=running.active_turn_id)
    else:
        path = server.manager.store.find_path(thread_id)
        if path is None:
            raise invalid_request(f"no rollout found for thread id {thread_id}")
        read = await trio.to_thread.run_sync(read_rollout, path)
        turns = build_turns(read.source.iter_forward_from(0))
    return [turn.id for turn in turns]


async def thread_read(server: AppServer, conn: Connection, params: v2.ThreadReadParams) -> v2.ThreadResult:
    tid = _thread_id(params.thread_id)
    running = server.manager.running(tid)
    if running is not None:
        return v2.ThreadResult(thread=live_thread(server, running, include_turns=params.include_turns))
    entry = server.manager.store.entry(tid)
    if entry is None:
        raise invalid_request(f"thread not loaded: {tid}")
    thread = await trio.to_thread.run_sync(lambda: stored_thread(server, entry, include_turns=params.include_turns))
    return v2.ThreadResult(thread=thread)


def _limit(value: int | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if value < 1:
        raise RpcError(INVALID_PARAMS, f"Invalid params: limit must be at least 1, got {value}")
    return min(value, MAX_PAGE)


async def thread_list(server: AppServer, conn: Connection, params: v2.ThreadListParams) -> v2.ThreadListResult:
    try:
        page = server.manager.list_threads(limit=_limit(params.limit), cursor=params.cursor, archived=bool(params.archived))
    except ThreadStoreError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    return v2.ThreadListResult(data=[stored_thread(server, entry) for entry in page.entries], next_cursor=page.next_cursor)


async def thread_loaded_list(server: AppServer, conn: Connection, params: v2.ThreadLoadedListParams) -> v2.ThreadLoadedListResult:
    ids = server.manager.list_thread_ids()
    start = 0
    if params.cursor:
        start = next((i for i, tid in enumerate(ids) if tid > params.cursor), len(ids))
    limit = _limit(params.limit) if params.limit is not None else len(ids)
    page = ids[start : start + limit]
    more = start + limit < len(ids)
    return v2.ThreadLoadedListResult(data=page, next_cursor=page[-1] if more and page else None)


async def thread_archive(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.EmptyResult:
    tid = _thread_id(params.thread_id)
    was_loaded = server.manager.running(tid) is not None
    watchers = server.subscribers(tid)
    await server.manager.archive_thread(tid)  # on failure nothing has changed, subscriptions included
    server.drop_subscribers(tid)
    if was_loaded:
        conn.after(("thread/status/changed", v2.ThreadStatusChanged(thread_id=tid, status=v2.NOT_LOADED)), also=watchers)
    conn.after(("thread/archived", v2.ThreadIdNotice(thread_id=tid)), also=watchers)
    return v2.EmptyResult()


async def thread_unarchive(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.ThreadResult:
    tid = _thread_id(params.thread_id)
    if server.manager.running(tid) is not None:
        raise invalid_request(f"thread {tid} already has an active writer")
    await server.manager.unarchive_thread(tid)
    entry = server.manager.store.entry(tid)
    if entry is None:
        raise invalid_request(f"no rollout found for thread id {tid}")
    conn.after(("thread/unarchived", v2.ThreadIdNotice(thread_id=tid)))
    return v2.ThreadResult(thread=stored_thread(server, entry))


async def thread_unsubscribe(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.UnsubscribeResult:
    tid = _thread_id(params.thread_id)
    if server.manager.running(tid) is None:
        return v2.UnsubscribeResult(status="notLoaded")
    if not server.unsubscribe(conn, tid):
        return v2.UnsubscribeResult(status="notSubscribed")
    return v2.UnsubscribeResult(status="unsubscribed")


async def thread_name_set(server: AppServer, conn: Connection, params: v2.ThreadSetNameParams) -> v2.EmptyResult:
    tid = _thread_id(params.thread_id)
    if server.manager.running(tid) is None and server.manager.store.entry(tid) is None:
        raise invalid_request(f"thread not found: {tid}")
    name = params.name.strip()
    if not name:
        raise RpcError(INVALID_PARAMS, "Invalid params: name must not be empty")
    server.manager.store.set_name(tid, name)
    conn.after(("thread/name/updated", v2.ThreadNameUpdated(thread_id=tid, thread_name=name)), also=server.subscribers(tid))
    return v2.EmptyResult()


async def _rollback(server: AppServer, tid: str, num_turns: int) -> v2.ThreadResult:
    handle = _loaded(server, tid)
    if num_turns < 1:
        raise RpcError(INVALID_PARAMS, "Invalid params: numTurns must be >= 1")
    await _call(handle, ThreadRollbackOp(num_turns=num_turns))
    return v2.ThreadResult(thread=live_thread(server, handle, include_turns=True))


async def thread_rollback(server: AppServer, conn: Connection, params: v2.ThreadRollbackParams) -> v2.ThreadResult:
    return await _rollback(server, _thread_id(params.thread_id), params.num_turns)


async def thread_revert(server: AppServer, conn: Connection, params: v2.ThreadRevertParams) -> v2.ThreadResult:
    tid = _thread_id(params.thread_id)
    _loaded(server, tid)
    ids = await _turn_ids(server, tid)
    if params.before_turn_id not in ids:
        raise invalid_request(f"turn {params.before_turn_id} not found in thread {tid}")
    result = await _rollback(server, tid, len(ids) - ids.index(params.before_turn_id))
    conn.after(("thread/reverted", v2.ThreadIdNotice(thread_id=tid)), also=server.subscribers(tid))
    return result


async def thread_compact_start(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.EmptyResult:
    await _call(_loaded(server, _thread_id(params.thread_id)), CompactOp())
    return v2.EmptyResult()


async def turn_start(server: AppServer, conn: Connection, params: v2.TurnStartParams) -> v2.TurnResult:
    handle = _loaded(server, _thread_id(params.thread_id))
    op = UserTurnOp(
        items=user_inputs(params.input), cwd=params.cwd, model=params.model,
        approval_policy=approval_policy(params.approval_policy),
        sandbox_policy=sandbox_policy(params.sandbox_policy), effort=params.effort, summary=params.summary,
    )
    server.subscribe(conn, handle)
    receipt = await _call(handle, op)
    if receipt.turn_id is None:
        raise invalid_request("the turn did not start")
    return v2.TurnResult(turn=v2.Turn(id=receipt.turn_id, items_view="notLoaded"))


async def turn_steer(server: AppServer, conn: Connection, params: v2.TurnSteerParams) -> v2.TurnSteerResult:
    handle = _loaded(server, _thread_id(params.thread_id))
    active = handle.active_turn_id
    if active != params.expected_turn_id:
        raise invalid_request(f"expected active turn `{params.expected_turn_id}` but found `{active}`")
    receipt = await _call(handle, UserInputOp(items=user_inputs(params.input)))
    if receipt.turn_id is None:
        raise invalid_request("no active turn to steer")
    return v2.TurnSteerResult(turn_id=receipt.turn_id)


async def turn_interrupt(server: AppServer, conn: Connection, params: v2.TurnInterruptParams) -> v2.EmptyResult:
    handle = _loaded(server, _thread_id(params.thread_id))
    if handle.active_turn_id is None or handle.active_turn_id != params.turn_id:
        raise invalid_request("no active turn to interrupt")
    await handle.call(InterruptOp())
    return v2.EmptyResult()


_EFFORTS = [
    v2.ReasoningEffortOption(reasoning_effort="low", description="Fast responses with lighter reasoning"),
    v2.ReasoningEffortOption(reasoning_effort="medium", description="Balances speed and reasoning depth"),
    v2.ReasoningEffortOption(reasoning_effort="high", description="Greater reasoning depth for complex problems"),
]


async def model_list(server: AppServer, conn: Connection, params: v2.ModelListParams) -> v2.ModelListResult:
    model = server.manager.config.model
    info = v2.ModelInfo(
        id=model, model=model, display_name=model, description=f"The configured model ({server.manager.config.model_provider})",
        hidden=False, is_default=True, default_reasoning_effort="medium", supported_reasoning_efforts=_EFFORTS,
    )
    return v2.ModelListResult(data=[info])


HANDLERS: dict[str, Handler] = {
    "initialize": initialize,
    "thread/start": thread_start,
    "thread/resume": thread_resume,
    "thread/fork": thread_fork,
    "thread/read": thread_read,
    "thread/list": thread_list,
    "thread/loaded/list": thread_loaded_list,
    "thread/archive": thread_archive,
    "thread/unarchive": thread_unarchive,
    "thread/unsubscribe": thread_unsubscribe,
    "thread/name/set": thread_name_set,
    "thread/rollback": thread_rollback,
    "thread/revert": thread_revert,
    "thread/compact/start": thread_compact_start,
    "turn/start": turn_start,
    "turn/steer": turn_steer,
    "turn/interrupt": turn_interrupt,
    "model/list": model_list,
}
