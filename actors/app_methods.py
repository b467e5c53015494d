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
from persistence.store import ThreadEntry, ThreadStoreError
from persistence.turns import build_turns
from protocol import v2
from protocol.jsonrpc import INVALID_PARAMS, RpcError, invalid_request
from protocol.ops import InterruptOp, ThreadRollbackOp, UserInputOp, UserTurnOp
from protocol.v2map import (
    UnsupportedInput,
    approval_policy,
    sandbox_out,
    sandbox_policy,
    user_inputs,
)

from .config import ConfigError
from .handle import ThreadHandle
from .manager import ThreadNotFoundError

if TYPE_CHECKING:
    from .app_server import AppServer, Connection

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = "0.163.0"
"""The Codex app-server protocol version Spindle implements (the SDK gates fields on it)."""
DEFAULT_PAGE = 50
MAX_PAGE = 500

Handler = Callable[["AppServer", "Connection", Any], Awaitable[Any]]


def _epoch(stamp: str) -> int:
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return int(time.time())


def _thread_id(raw: str) -> str:
    from protocol.ids import parse_thread_id

    try:
        return parse_thread_id(raw)
    except ValueError as exc:
        raise invalid_request(str(exc)) from None


def _loaded(server: AppServer, thread_id: str) -> ThreadHandle:
    try:
        handle = server.manager.get_thread(thread_id)
    except ThreadNotFoundError:
        raise invalid_request(f"thread not found: {thread_id}") from None
    if handle.is_closed:
        raise invalid_request(f"thread not found: {thread_id}")
    return handle


def _store_error(exc: Exception) -> RpcError:
    return invalid_request(str(exc))


# --- thread objects ---------------------------------------------------------


def live_thread(server: AppServer, handle: ThreadHandle, *, include_turns: bool = False) -> v2.Thread:
    rollout = handle.rollout
    meta = rollout.meta
    settings = handle.settings
    entry = server.manager.store.entry(handle.thread_id) if rollout.persisted else None
    items = rollout.source.items()
    turns = build_turns(items, live_turn_id=handle.active_turn_id) if include_turns else []
    created = _epoch(meta.timestamp)
    return v2.Thread(
        id=handle.thread_id, session_id=handle.thread_id, forked_from_id=meta.forked_from_id,
        preview=entry.preview if entry else _preview(items), ephemeral=rollout.ephemeral,
        model_provider=settings.provider_id, model=settings.model, created_at=created,
        updated_at=_epoch(entry.updated_at) if entry else created,
        status=v2.active_status() if handle.active_turn_id else v2.IDLE,
        path=None if rollout.ephemeral else str(rollout.path), cwd=settings.cwd,
        cli_version=meta.cli_version, name=server.manager.store.name(handle.thread_id), turns=turns,
    )


def _preview(items: list[Any]) -> str:
    from persistence.store import preview_of

    return preview_of(items)


def stored_thread(server: AppServer, entry: ThreadEntry, *, include_turns: bool = False) -> v2.Thread:
    running = server.loaded(entry.id)
    if running is not None:
        return live_thread(server, running, include_turns=include_turns)
    turns: list[v2.Turn] = []
    cli_version = ""
    if include_turns:
        try:
            read = read_rollout(Path(entry.path))
        except (OSError, RolloutReadError) as exc:
            raise invalid_request(f"cannot read rollout {entry.path}: {exc}") from None
        turns = build_turns(read.source.items())
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
    try:
        policy = approval_policy(params.approval_policy)
    except UnsupportedInput as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
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
    try:
        handle = await server.manager.start_thread(ephemeral=bool(params.ephemeral), **_overrides(params))
    except ConfigError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    server.subscribe(conn, handle)
    result = session_result(server, handle, include_turns=False)
    conn.after(("thread/started", v2.ThreadStarted(thread=result.thread)))
    return result


async def thread_resume(server: AppServer, conn: Connection, params: v2.ThreadResumeParams) -> v2.ThreadSessionResult:
    tid = _thread_id(params.thread_id)
    try:
        handle = await server.manager.resume_thread(tid, path=params.path, **_overrides(params))
    except (ThreadStoreError, RolloutReadError) as exc:
        raise _store_error(exc) from None
    except ConfigError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    server.subscribe(conn, handle)
    return session_result(server, handle, include_turns=not params.exclude_turns)


async def thread_fork(server: AppServer, conn: Connection, params: v2.ThreadForkParams) -> v2.ThreadSessionResult:
    tid = _thread_id(params.thread_id)
    snapshot = ForkSnapshot.interrupted()
    if params.last_turn_id is not None:
        snapshot = _snapshot_through(server, tid, params.last_turn_id)
    try:
        handle = await server.manager.fork_thread(snapshot, tid, path=params.path, **_overrides(params))
    except (ThreadStoreError, RolloutReadError) as exc:
        raise _store_error(exc) from None
    except ConfigError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    server.subscribe(conn, handle)
    result = session_result(server, handle, include_turns=not params.exclude_turns)
    conn.after(("thread/started", v2.ThreadStarted(thread=live_thread(server, handle))))
    return result


def _snapshot_through(server: AppServer, thread_id: str, last_turn_id: str) -> ForkSnapshot:
    turns = _turns_of(server, thread_id)
    ids = [turn.id for turn in turns]
    if last_turn_id not in ids:
        raise invalid_request(f"turn {last_turn_id} not found in thread {thread_id}")
    return ForkSnapshot.truncate_before(ids.index(last_turn_id) + 1)


def _turns_of(server: AppServer, thread_id: str) -> list[v2.Turn]:
    running = server.loaded(thread_id)
    if running is not None:
        return build_turns(running.rollout.source.items(), live_turn_id=running.active_turn_id)
    path = server.manager.store.find_path(thread_id)
    if path is None:
        raise invalid_request(f"no rollout found for thread id {thread_id}")
    return build_turns(read_rollout(path).source.items())


async def thread_read(server: AppServer, conn: Connection, params: v2.ThreadReadParams) -> v2.ThreadResult:
    tid = _thread_id(params.thread_id)
    running = server.loaded(tid)
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
    was_loaded = server.loaded(tid) is not None
    watchers = server.drop_subscribers(tid)
    try:
        await server.manager.archive_thread(tid)
    except ThreadStoreError as exc:
        raise _store_error(exc) from None
    notices: list[tuple[str, object]] = []
    if was_loaded:
        notices.append(("thread/status/changed", v2.ThreadStatusChanged(thread_id=tid, status=v2.NOT_LOADED)))
    notices.append(("thread/archived", v2.ThreadIdNotice(thread_id=tid)))
    server.notify_all({conn, *watchers}, notices)
    return v2.EmptyResult()


async def thread_unarchive(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.ThreadResult:
    tid = _thread_id(params.thread_id)
    if server.loaded(tid) is not None:
        raise invalid_request(f"thread {tid} already has an active writer")
    try:
        await server.manager.unarchive_thread(tid)
    except ThreadStoreError as exc:
        raise _store_error(exc) from None
    entry = server.manager.store.entry(tid)
    if entry is None:
        raise invalid_request(f"no rollout found for thread id {tid}")
    conn.after(("thread/unarchived", v2.ThreadIdNotice(thread_id=tid)))
    return v2.ThreadResult(thread=stored_thread(server, entry))


async def thread_unsubscribe(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.UnsubscribeResult:
    tid = _thread_id(params.thread_id)
    if server.loaded(tid) is None:
        return v2.UnsubscribeResult(status="notLoaded")
    if not server.unsubscribe(conn, tid):
        return v2.UnsubscribeResult(status="notSubscribed")
    return v2.UnsubscribeResult(status="unsubscribed")


async def thread_name_set(server: AppServer, conn: Connection, params: v2.ThreadSetNameParams) -> v2.EmptyResult:
    tid = _thread_id(params.thread_id)
    if server.loaded(tid) is None and server.manager.store.entry(tid) is None:
        raise invalid_request(f"thread not found: {tid}")
    name = params.name.strip()
    if not name:
        raise RpcError(INVALID_PARAMS, "Invalid params: name must not be empty")
    server.manager.store.set_name(tid, name)
    server.notify_all({conn, *server.subscribers(tid)}, [("thread/name/updated", v2.ThreadNameUpdated(thread_id=tid, thread_name=name))])
    return v2.EmptyResult()


async def _rollback(server: AppServer, tid: str, num_turns: int) -> v2.ThreadResult:
    handle = _loaded(server, tid)
    if num_turns < 1:
        raise RpcError(INVALID_PARAMS, "Invalid params: numTurns must be >= 1")
    receipt = await handle.call(ThreadRollbackOp(num_turns=num_turns))
    if receipt.error is not None:
        raise invalid_request(receipt.error.message)
    return v2.ThreadResult(thread=live_thread(server, handle, include_turns=True))


async def thread_rollback(server: AppServer, conn: Connection, params: v2.ThreadRollbackParams) -> v2.ThreadResult:
    return await _rollback(server, _thread_id(params.thread_id), params.num_turns)


async def thread_revert(server: AppServer, conn: Connection, params: v2.ThreadRevertParams) -> v2.ThreadResult:
    tid = _thread_id(params.thread_id)
    handle = _loaded(server, tid)
    ids = [turn.id for turn in build_turns(handle.rollout.source.items(), live_turn_id=handle.active_turn_id)]
    if params.before_turn_id not in ids:
        raise invalid_request(f"turn {params.before_turn_id} not found in thread {tid}")
    result = await _rollback(server, tid, len(ids) - ids.index(params.before_turn_id))
    server.notify_all({conn, *server.subscribers(tid)}, [("thread/reverted", v2.ThreadIdNotice(thread_id=tid))])
    return result


async def thread_compact_start(server: AppServer, conn: Connection, params: v2.ThreadIdParams) -> v2.EmptyResult:
    from protocol.ops import CompactOp

    handle = _loaded(server, _thread_id(params.thread_id))
    receipt = await handle.call(CompactOp())
    if receipt.error is not None:
        raise invalid_request(receipt.error.message)
    return v2.EmptyResult()


async def turn_start(server: AppServer, conn: Connection, params: v2.TurnStartParams) -> v2.TurnResult:
    handle = _loaded(server, _thread_id(params.thread_id))
    try:
        op = UserTurnOp(
            items=user_inputs(params.input), cwd=params.cwd, model=params.model,
            approval_policy=approval_policy(params.approval_policy),
            sandbox_policy=sandbox_policy(params.sandbox_policy), effort=params.effort, summary=params.summary,
        )
    except UnsupportedInput as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    server.subscribe(conn, handle)
    receipt = await handle.call(op)
    if receipt.error is not None or receipt.turn_id is None:
        raise invalid_request(receipt.error.message if receipt.error else "the turn did not start")
    return v2.TurnResult(turn=v2.Turn(id=receipt.turn_id, items_view="notLoaded"))


async def turn_steer(server: AppServer, conn: Connection, params: v2.TurnSteerParams) -> v2.TurnSteerResult:
    handle = _loaded(server, _thread_id(params.thread_id))
    active = handle.active_turn_id
    if active != params.expected_turn_id:
        raise invalid_request(f"expected active turn `{params.expected_turn_id}` but found `{active}`")
    receipt = await handle.call(UserInputOp(items=user_inputs(params.input)))
    if receipt.error is not None or receipt.turn_id is None:
        raise invalid_request(receipt.error.message if receipt.error else "no active turn to steer")
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
