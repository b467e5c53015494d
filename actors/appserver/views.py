"""App-server v2 `Thread` objects: of a running thread, or of a stored one from its index entry."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import trio

from spindle.actors.runtime import ThreadHandle, ThreadManager
from spindle.actors.runtime.permissions import describe
from spindle.persistence.query import classify_source
from spindle.persistence.reader import RolloutReadError, read_session_meta
from spindle.persistence.store import ThreadEntry
from spindle.protocol.appserver import v2
from spindle.protocol.appserver.jsonrpc import invalid_request
from spindle.protocol.appserver.v2map import sandbox_out

from .turns import IndexedTurns, stored_turns


def _epoch(stamp: str) -> int:
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return int(time.time())


async def live_thread(manager: ThreadManager, handle: ThreadHandle, *, include_turns: bool = False) -> v2.Thread:
    rollout = handle.rollout
    meta = rollout.meta
    settings = handle.settings
    store = manager.store
    entry = await store.entry(handle.thread_id) if rollout.persisted else None
    turns = await IndexedTurns(rollout.source, handle.active_turn_id).all() if include_turns else []
    created = _epoch(meta.timestamp)
    return v2.Thread(
        id=handle.thread_id, session_id=handle.thread_id, forked_from_id=meta.forked_from_id,
        preview=entry.preview if entry else rollout.source.preview, ephemeral=rollout.ephemeral,
        model_provider=settings.provider_id, model=settings.model, created_at=created,
        updated_at=_epoch(entry.updated_at) if entry else created,
        status=v2.active_status(handle.waiting_on_approval, handle.waiting_on_user_input) if handle.active_turn_id else v2.IDLE,
        path=None if rollout.ephemeral else str(rollout.path), cwd=settings.cwd,
        cli_version=meta.cli_version, name=entry.name if entry else await store.name(handle.thread_id), turns=turns,
        source=classify_source(meta.source)[0],
    )


async def stored_thread(manager: ThreadManager, entry: ThreadEntry, *, include_turns: bool = False) -> v2.Thread:
    running = manager.running(entry.id)
    if running is not None:
        return await live_thread(manager, running, include_turns=include_turns)
    turns: list[v2.Turn] = []
    cli_version = ""
    if include_turns:
        try:
            turns = await (await stored_turns(Path(entry.path))).all()
            cli_version = (await trio.to_thread.run_sync(read_session_meta, Path(entry.path))).cli_version
        except (OSError, RolloutReadError) as exc:
            raise invalid_request(f"cannot read rollout {entry.path}: {exc}") from None
    return v2.Thread(
        id=entry.id, session_id=entry.id, forked_from_id=entry.forked_from_id, preview=entry.preview,
        ephemeral=False, model_provider=entry.model_provider, model=None,
        created_at=_epoch(entry.created_at), updated_at=_epoch(entry.updated_at), status=v2.NOT_LOADED,
        path=entry.path, cwd=entry.cwd, cli_version=cli_version, name=entry.name, turns=turns,
        source=entry.source_kind,
    )


async def session_result(manager: ThreadManager, handle: ThreadHandle, *, include_turns: bool) -> v2.ThreadSessionResult:
    s = handle.settings
    view = describe(s, handle.permission_profiles)
    sandbox = sandbox_out(s.sandbox_mode, writable_roots=view.writable_roots, network=view.network,
                          tmpdir_writable=view.tmpdir_writable, slash_tmp_writable=view.slash_tmp_writable)
    active = v2.ActivePermissionProfile(id=view.profile.id, extends=view.profile.extends) if view.selected_by_id else None
    return v2.ThreadSessionResult(
        thread=await live_thread(manager, handle, include_turns=include_turns), model=s.model,
        model_provider=s.provider_id, cwd=s.cwd, approval_policy=s.approval_policy,
        approvals_reviewer="user", sandbox=sandbox, runtime_workspace_roots=view.runtime_roots,
        active_permission_profile=active, reasoning_effort=s.effort,
    )


