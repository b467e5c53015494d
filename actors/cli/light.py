"""`spindle app-server proxy` and `spindle app-server daemon start|stop|status`: parsed and run
without the runtime (no trio, structlog or msgspec), so a proxy is up in a few milliseconds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from spindle.protocol.appserver.control import CONTROL_SOCKET, DAEMON_LOG, IDLE_EXIT_S, codex_home

from . import proxy

PROXY_RULE = f"""\
Relays JSON-RPC lines on stdin/stdout to a running app-server's control socket, one WebSocket
text frame per line: the same protocol as `spindle app-server` on stdio, answered by a shared
daemon, so it starts without Spindle's own start-up (~300 ms).

When a daemon is started: without --sock, if nothing answers on the default control socket
  $CODEX_HOME/{CONTROL_SOCKET}
the proxy starts one (as `spindle app-server daemon start` does, under the startup lock, so
concurrent proxies make one daemon) and then relays. With --sock PATH or --no-start it never
starts one: it exits 2 if nothing answers.

The daemon is shared by every proxy on that CODEX_HOME and keeps the environment, working
directory and config (-c overrides included) it started with; -c given to a proxy applies only
to a daemon that proxy starts. It exits after --idle-exit seconds with no client.

When stdin ends, the proxy waits for the answers to the requests it relayed, then closes.
Exit codes: 0 when stdin ends (after a close handshake) or on SIGTERM, 1 when the server goes
away first, 2 when nothing answers or a daemon cannot start, 130 on Ctrl-C.
"""

DAEMON_HELP = f"""\
The daemon is `spindle app-server --listen unix://` on $CODEX_HOME/{CONTROL_SOCKET},
detached, its stderr in $CODEX_HOME/{DAEMON_LOG}.
  start   start one unless a server already answers there; return once it answers
  stop    SIGTERM the process listening there and wait for it to exit
  status  print JSON (running, pid, socket, version); exit 1 when none runs
"""

LIGHT_ACTIONS = frozenset({"proxy", "daemon"})
_VALUED_GLOBALS = frozenset({"-c", "--config", "--log-level"})


def command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is in `argv` (without the program name), past any global options."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in _VALUED_GLOBALS:
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return index
    return None


def is_light(argv: Sequence[str]) -> bool:
    """Whether `argv` (without the program name) is `app-server proxy` or `app-server daemon`."""
    index = command_index(argv)
    return index is not None and argv[index] == "app-server" and index + 1 < len(argv) and argv[index + 1] in LIGHT_ACTIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spindle")
    parser.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                        help="a config.toml override, for a daemon this command starts")
    parser.add_argument("--log-level", default=None, help="stderr log level of a daemon this command starts")
    commands = parser.add_subparsers(dest="command", required=True)
    actions = commands.add_parser("app-server").add_subparsers(dest="action", required=True)
    raw = argparse.RawDescriptionHelpFormatter
    relay = actions.add_parser("proxy", help="relay stdio to the app-server daemon", description=PROXY_RULE, formatter_class=raw)
    relay.add_argument("--sock", metavar="PATH", help="the app-server's Unix socket (never starts a daemon)")
    relay.add_argument("--no-start", action="store_true", help="fail instead of starting a daemon when none answers")
    _add_idle_exit(relay)
    daemon = actions.add_parser("daemon", help="start, stop or query the app-server daemon", description=DAEMON_HELP, formatter_class=raw)
    verbs = daemon.add_subparsers(dest="verb", required=True)
    _add_idle_exit(verbs.add_parser("start", help="start the daemon unless one answers"))
    verbs.add_parser("stop", help="stop the daemon (SIGTERM) and wait for it to exit")
    verbs.add_parser("status", help="print the daemon's pid, socket and version as JSON")
    return parser


def _add_idle_exit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S, metavar="SECS",
                        help=f"a daemon this starts exits after SECS with no client (default {IDLE_EXIT_S:g}; 0: never)")


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        proxy.on_stop_signals()
        if args.action == "proxy":
            return _proxy(args)
        return _daemon(args)
    except proxy.Stopped as stopped:
        return proxy.SIGNAL_EXIT[stopped.signum]


def _proxy(args: argparse.Namespace) -> int:
    path = args.sock or str(codex_home() / CONTROL_SOCKET)
    try:
        try:
            return proxy.relay(path)
        except proxy.NothingListens:
            if args.sock or args.no_start:
                raise
        if not _start_daemon(args):
            return proxy.EXIT_UNREACHABLE
        return proxy.relay(path)
    except proxy.NothingListens as exc:
        hint = "start one with `spindle app-server daemon start`" if not args.sock else "start `spindle app-server --listen unix://PATH` there"
        sys.stderr.write(f"spindle app-server proxy: {exc} ({hint})\n")
        return exc.code
    except proxy.ProxyError as exc:
        sys.stderr.write(f"spindle app-server proxy: {exc}\n")
        return exc.code


def _start_daemon(args: argparse.Namespace) -> bool:
    """Start the daemon for a proxy; False, said on stderr, if it cannot start."""
    from . import daemon

    try:
        daemon.start(codex_home(), config=args.config, log_level=args.log_level, idle_exit_s=args.idle_exit)
    except daemon.DaemonError as exc:
        sys.stderr.write(f"spindle app-server proxy: cannot start a daemon: {exc}\n")
        return False
    return True


def _daemon(args: argparse.Namespace) -> int:
    from . import daemon

    home = codex_home()
    try:
        if args.verb == "start":
            daemon.start(home, config=args.config, log_level=args.log_level, idle_exit_s=args.idle_exit)
            found = daemon.status(home)
        elif args.verb == "stop":
            pid = daemon.stop(home)
            found = {"running": False, "socket": str(daemon.socket_path(home)), "stopped": pid}
        else:
            found = daemon.status(home)
    except daemon.DaemonError as exc:
        sys.stderr.write(f"spindle app-server daemon {args.verb}: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(found) + "\n")
    return 1 if args.verb == "status" and not found["running"] else 0
