"""`spindle app-server`: the app-server on its listeners, stopped by a signal (or stdin's end)."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from trio_typing import TaskStatus

from spindle.actors.appserver.listeners import Bound, Limits, ListenError, serve
from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.runtime.config_layers import LayeredConfig
from spindle.protocol.appserver.listen import ListenUrlError, check_exposure, parse_listen
from spindle.protocol.config import Config

from .main import leaves
from .signals import EXIT_CODES, on_signal

AUTH_MODES = ("capability-token",)
"""`--ws-auth` modes Spindle serves (Codex also has `signed-bearer-token`)."""


class ServeError(Exception):
    """Flags the app-server cannot start with; the message says which and why."""


def ws_token(mode: str | None, token_file: Path | None) -> str | None:
    """The bearer token `--ws-auth` and `--ws-token-file` ask for; None without them."""
    if mode is None:
        if token_file is not None:
            raise ServeError("--ws-token-file needs --ws-auth capability-token")
        return None
    if mode not in AUTH_MODES:
        raise ServeError(f"--ws-auth {mode}: Spindle serves only {', '.join(AUTH_MODES)}")
    if token_file is None:
        raise ServeError("--ws-auth capability-token needs --ws-token-file FILE")
    try:
        token = token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"cannot read --ws-token-file {token_file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ServeError(f"--ws-token-file {token_file} is empty")
    return token


def check_listen(urls: list[str], token: str | None) -> None:
    """ServeError if a `--listen` URL is malformed or may not start (before anything starts)."""
    try:
        check_exposure([parse_listen(url) for url in urls], token=None if token is None else token.encode())
    except ListenUrlError as exc:
        raise ServeError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class NodeOptions:
    """`--store` and its flags: this server is one node of several sharing a PostgreSQL store."""

    dsn: str
    schema: str
    node_id: str
    url: str
    ttl_s: float


@asynccontextmanager
async def _runtime(config: Config | LayeredConfig, node: NodeOptions | None) -> AsyncIterator[ThreadManager]:
    """The runtime, as a node of the store's cluster when `node` says so."""
    if node is None:
        async with open_runtime(config) as manager:
            yield manager
        return
    from spindle.actors.runtime.cluster import Cluster
    from spindle.persistence.pg_schema import safe_dsn
    from spindle.persistence.pg_store import open_postgres_store

    async with open_postgres_store(node.dsn, schema=node.schema) as store:
        cluster = Cluster(store, node.node_id, ttl_s=node.ttl_s, directory=store, url=node.url)
        async with open_runtime(config, cluster=cluster) as manager:
            sys.stderr.write(f"spindle node {node.node_id} joined the store {safe_dsn(node.dsn)} (schema {node.schema}),"
                             f" lease TTL {node.ttl_s:g} s, advertising {node.url or 'no address'}\n")
            yield manager


async def serve_app_server(
    config: Config | LayeredConfig, urls: list[str], token: str | None, idle_exit_s: float | None = None,
    node: NodeOptions | None = None,
) -> int:
    """Serve `urls` until SIGTERM/SIGINT, until stdin closes when stdio is one of them, or else
    after `idle_exit_s` with no client connected.

    Either way every running turn is aborted and every rollout flushed before the process exits:
    0 for stdin's end and SIGTERM, 130 for SIGINT, 2 if a listener cannot start.
    """
    stopped_by: list[signal.Signals] = []
    code = 0
    try:
        async with _runtime(config, node) as manager, trio.open_nursery() as serving:

            def stop(signum: signal.Signals) -> None:
                stopped_by.append(signum)
                serving.cancel_scope.cancel()

            serving.start_soon(lambda: on_signal(signal.SIGTERM, signal.SIGINT, then=stop))
            limits = Limits(idle_exit_s=idle_exit_s)
            serving_all = partial(_serve_then_stop, manager, urls, token=token, limits=limits)
            bound = await serving.start(serving_all, serving.cancel_scope)
            _announce(bound)
    except* ListenError as group:
        for exc in leaves(group):
            sys.stderr.write(f"spindle app-server: {exc}\n")
        code = 2
    return EXIT_CODES[stopped_by[0]] if stopped_by else code


async def _serve_then_stop(
    manager: ThreadManager, urls: list[str], done: trio.CancelScope, *, token: str | None, limits: Limits,
    task_status: TaskStatus[tuple[Bound, ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(manager, *urls, token=token, limits=limits, task_status=task_status)
    done.cancel()  # stdin ended, or no client came for `idle_exit_s`


def _announce(bound: tuple[Bound, ...]) -> None:
    """Where the server listens, on stderr (stdout carries JSON-RPC only)."""
    for each in bound:
        if each.port is not None:
            http = each.url.replace("ws://", "http://", 1)
            sys.stderr.write(f"spindle app-server listening on {each.url} (readyz: {http}/readyz, healthz: {http}/healthz)\n")
        elif each.path is not None:
            sys.stderr.write(f"spindle app-server listening on {each.url}\n")
    sys.stderr.flush()
