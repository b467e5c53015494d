"""The `spindle` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from spindle.actors.runtime.config import ConfigError
from spindle.actors.runtime.config_layers import LayeredConfig
from spindle.persistence.store import ThreadStoreError

from .early import restore_stop_signals
from .logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spindle", description="A Trio runtime for Codex-style agent threads.")
    parser.add_argument(
        "-c", "--config", action="append", default=[], metavar="KEY=VALUE",
        help="override a config.toml key (dotted path; the value is parsed as TOML, else taken as a string)",
    )
    parser.add_argument("--log-level", default=os.environ.get("SPINDLE_LOG", "warning"), help="stderr log level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="two threads streaming one turn each against the built-in mock model")
    demo.add_argument("--threads", type=int, default=2)
    add_app_server_parser(sub)
    add_load_parser(sub)
    add_transfer_parsers(sub)
    mock = sub.add_parser("mock-model", help="serve the scripted Responses API mock on loopback")
    mock.add_argument("--port", type=int, default=0)
    mock.add_argument("--latency-ms", type=float, default=None, help="stream each reply over this many ms (default: echo at once)")
    mock.add_argument("--reply-tokens", type=int, default=16, help="deltas per reply with --latency-ms (default 16)")
    return parser


def add_app_server_parser(sub: Any) -> None:
    server = sub.add_parser(
        "app-server", help="serve the Codex app-server v2 protocol (JSON-RPC) over stdio, WebSocket or a Unix socket",
        epilog="Also: `spindle app-server proxy` (stdio relayed to a shared daemon, which it starts if none runs: "
               "a fast start) and `spindle app-server daemon start|stop|status`; see their --help.",
    )
    server.add_argument(
        "--listen", action="append", default=None, metavar="URL",
        help="stdio:// (the default), ws://IP:PORT, unix:// (the control socket under CODEX_HOME) or unix://PATH; "
             "repeat to serve several at once",
    )
    server.add_argument("--ws-auth", metavar="MODE", help="capability-token: ws:// clients must send Authorization: Bearer <token>")
    server.add_argument("--ws-token-file", type=Path, metavar="FILE", help="the token for --ws-auth capability-token")
    server.add_argument("--analytics-default-enabled", action="store_true", help="accepted and ignored (the VS Code extension passes it)")
    server.add_argument(
        "--idle-exit", type=float, default=0.0, metavar="SECS",
        help="with socket listeners only: exit after SECS with no client connected (default 0: never)",
    )
    node = server.add_argument_group(
        "node", "run as one node of several sharing threads through a PostgreSQL store (--store)")
    node.add_argument("--store", metavar="DSN", help="postgresql://... : the shared thread store (PostgreSQL 13 or later)")
    node.add_argument("--store-schema", default="spindle", metavar="NAME", help="its schema (default spindle)")
    node.add_argument("--node-id", metavar="ID", help="this node's name in the store (default HOST-PID)")
    node.add_argument("--advertise", default="", metavar="URL", help="the ws:// address other nodes and clients reach this node at")
    node.add_argument("--lease-ttl", type=float, default=15.0, metavar="SECS",
                      help="a thread's lease lasts this long unrenewed: how soon another node takes over a dead one's threads")


def add_transfer_parsers(sub: Any) -> None:
    export = sub.add_parser("export", help="write a thread's rollout as Codex JSONL to stdout")
    export.add_argument("thread_id", metavar="THREAD_ID")
    imported = sub.add_parser("import", help="add a Codex JSONL rollout to a store as a thread")
    imported.add_argument("file", type=Path, metavar="FILE")
    for parser in (export, imported):
        parser.add_argument("--store", metavar="DSN", default=None,
                            help="postgresql://... or a CODEX_HOME directory (default: $CODEX_HOME)")
        parser.add_argument("--schema", default="spindle", help="the PostgreSQL schema (default spindle)")


def add_load_parser(sub: Any) -> None:
    load = sub.add_parser(
        "load",
        help="drive N threads x M turns and report latency, throughput, errors, memory and CPU",
        description=(
            "Start --threads threads and run --turns turns on each, at most --concurrency threads at a "
            "time, in this process (--target inproc), through a `spindle app-server` child over stdio "
            "(--target app-server), or on a running app-server (--target ws://HOST:PORT or unix://PATH). "
            "The model is the built-in mock on loopback unless --provider configured; a running server uses its own."
        ),
    )
    load.add_argument("--threads", type=int, default=100, help="threads to start (default 100)")
    load.add_argument("--turns", type=int, default=3, help="turns per thread (default 3)")
    load.add_argument("--concurrency", type=int, default=None, help="threads driven at once (default: all)")
    load.add_argument(
        "--target", default="inproc", metavar="TARGET",
        help="inproc (the default), app-server, or a running server's ws://HOST:PORT or unix://PATH; "
             "several, comma-separated (ws://A,ws://B), spread the threads over those nodes in turn",
    )
    load.add_argument("--model-latency-ms", type=float, default=0.0, help="mock model: time to stream one reply, in ms (default 0)")
    load.add_argument("--reply-tokens", type=int, default=16, help="mock model: deltas per reply (default 16)")
    load.add_argument("--provider", action="store_true", help="use the configured model provider ($CODEX_HOME/config.toml and -c) instead of the mock")
    load.add_argument("--home", type=Path, default=None, help="CODEX_HOME for the run's rollouts (default: a new temporary directory)")
    load.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON to FILE")
    load.add_argument("--no-progress", action="store_true", help="no live progress bar")


async def run_mock(port: int, latency_ms: float | None, reply_tokens: int) -> int:
    from spindle.actors.testing.mock_model import MockModel, shaped_reply

    model = MockModel(record=False, port=port)
    if latency_ms is not None:
        model.default = shaped_reply(latency_ms, reply_tokens)
    async with trio.open_nursery() as nursery:
        mock = await nursery.start(model.run)
        sys.stdout.write(f"{mock.base_url}\n")
        sys.stdout.flush()
    return 0


LISTENING_COMMANDS = frozenset({"app-server", "load"})
"""Commands that stop on SIGINT/SIGTERM through `signals.on_signal` (the others on KeyboardInterrupt)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `spindle` command; its exit code. Errors a user can fix are one line on stderr."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    code = 2
    try:
        if args.command not in LISTENING_COMMANDS:
            restore_stop_signals()
        code = _run(args)
    except* KeyboardInterrupt:
        code = 130
    except* (ConfigError, ThreadStoreError) as group:  # a config or a CODEX_HOME the user can fix
        for exc in leaves(group):
            sys.stderr.write(f"spindle: {exc}\n")
        code = 2
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        if args.threads < 1:
            raise SystemExit("spindle demo: --threads must be at least 1")
        from .demo import run_demo  # imported here: `spindle app-server` starts faster without it

        return trio.run(run_demo, args.threads, args.config)
    if args.command == "app-server":
        from .serve import ServeError, check_listen, serve_app_server, ws_token

        urls = args.listen or ["stdio://"]
        try:
            token = ws_token(args.ws_auth, args.ws_token_file)
            check_listen(urls, token)
        except ServeError as exc:
            sys.stderr.write(f"spindle app-server: {exc}\n")
            return 2
        source = LayeredConfig(overrides=tuple(args.config))
        source.load().config  # noqa: B018 - a config the user can fix fails here, before anything starts
        if args.idle_exit < 0:
            sys.stderr.write("spindle app-server: --idle-exit must be >= 0\n")
            return 2
        node = None
        if args.store is not None:
            if args.lease_ttl <= 0:
                sys.stderr.write("spindle app-server: --lease-ttl must be > 0\n")
                return 2
            from .serve import NodeOptions

            node = NodeOptions(dsn=args.store, schema=args.store_schema, node_id=args.node_id or default_node_id(),
                               url=args.advertise, ttl_s=args.lease_ttl)
        elif args.node_id or args.advertise:
            sys.stderr.write("spindle app-server: --node-id and --advertise need --store\n")
            return 2
        return trio.run(serve_app_server, source, urls, token, args.idle_exit or None, node)
    if args.command == "load":
        from . import load

        return load.main(args)
    if args.command in ("export", "import"):
        from . import transfer

        return transfer.main(args)
    if args.command == "mock-model":
        if args.reply_tokens < 1 or (args.latency_ms is not None and args.latency_ms < 0):
            raise SystemExit("spindle mock-model: --reply-tokens must be >= 1 and --latency-ms >= 0")
        return trio.run(run_mock, args.port, args.latency_ms, args.reply_tokens)
    return 2


def leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    """The exceptions inside `group`, however deeply nested."""
    found: list[Exception] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def default_node_id() -> str:
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"
