"""The app-server daemon of one CODEX_HOME: `spindle app-server --listen unix://`, detached.

`start` launches one unless a server already answers on the control socket, under the startup
lock Codex uses (`app-server-control/app-server-startup.lock`), so concurrent starts (two proxies
at once) make exactly one daemon; it returns once the socket answers. `stop` sends SIGTERM to the
process listening there (the kernel names it: SO_PEERCRED) and waits for it to exit. `status`
asks the server itself (`initialize`) for its version. Standard library only, like the proxy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from spindle.protocol.appserver import wsframe as ws
from spindle.protocol.appserver.control import CONTROL_SOCKET, DAEMON_LOG, IDLE_EXIT_S, STARTUP_LOCK

from .proxy import ProxyError, connect, upgrade

START_TIMEOUT_S = 30.0
"""How long `start` waits for the lock and then for the new daemon's socket to answer."""
STOP_TIMEOUT_S = 30.0
"""How long `stop` waits for the daemon to exit after SIGTERM (it flushes every rollout first)."""
PROBE_TIMEOUT_S = 1.0
"""How long a check that something answers on the socket waits for the connect."""
POLL_S = 0.01
LOG_TAIL_BYTES = 2000
"""How much of the daemon's log a failed start quotes."""
STATUS_REQUEST_ID = "spindle-daemon-status"


class DaemonError(Exception):
    """The daemon could not be started, stopped or asked; the message says why."""


def socket_path(home: Path) -> Path:
    return home / CONTROL_SOCKET


def answers(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def listener_pid(path: Path) -> int | None:
    """The pid of the process listening on `path` (None if none, or the system cannot tell)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(str(path))
            return _peer_pid(probe)
        except OSError:
            return None


def _peer_pid(sock: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)  # Linux: the listener's pid, as of its listen()
    if option is None:
        return None
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return pid or None


def start(
    home: Path, *, config: Sequence[str] = (), log_level: str | None = None, idle_exit_s: float = IDLE_EXIT_S,
) -> bool:
    """Make sure a daemon answers on `home`'s control socket; True if this call started it.
    `config` (`-c` overrides) and `log_level` apply to a daemon it starts, not to a running one."""
    path = socket_path(home)
    if answers(path):
        return False
    deadline = time.monotonic() + START_TIMEOUT_S
    with _startup_lock(home, deadline):
        if answers(path):  # another start won the lock and finished
            return False
        _launch(home, path, deadline, config=config, log_level=log_level, idle_exit_s=idle_exit_s)
    return True


@contextlib.contextmanager
def _startup_lock(home: Path, deadline: float) -> Iterator[None]:
    lock = home / STARTUP_LOCK
    try:
        lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonError(f"cannot open the startup lock {lock}: {exc.strerror or exc}") from None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DaemonError(f"another start has held {lock} for {START_TIMEOUT_S:g} s") from None
                time.sleep(POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def _launch(
    home: Path, path: Path, deadline: float, *, config: Sequence[str], log_level: str | None, idle_exit_s: float,
) -> None:
    """Start `spindle app-server --listen unix://` in a session of its own and wait for its socket."""
    import subprocess

    log = home / DAEMON_LOG
    argv = [sys.executable, "-m", "spindle.actors.cli"]
    for override in config:
        argv += ["-c", override]
    if log_level is not None:
        argv += ["--log-level", log_level]
    argv += ["app-server", "--listen", "unix://", "--idle-exit", f"{idle_exit_s:g}"]
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stderr:
            offset = stderr.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            stderr.write(f"--- {stamp} spindle app-server daemon starting: {' '.join(argv[3:])}\n".encode())
            stderr.flush()
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                env={**os.environ, "CODEX_HOME": str(home)}, start_new_session=True,
            )
    except OSError as exc:
        raise DaemonError(f"cannot start the daemon: {exc.strerror or exc}") from None
    while not answers(path):
        if (code := child.poll()) is not None:
            raise DaemonError(f"the daemon exited with code {code} before listening; from {log}:\n{_tail(log, offset)}")
        if time.monotonic() > deadline:
            raise DaemonError(f"the daemon (pid {child.pid}) did not listen on {path} within {START_TIMEOUT_S:g} s; see {log}")
        time.sleep(POLL_S)


def _tail(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as file:
            file.seek(offset)
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return "(the log cannot be read)"
    return text[-LOG_TAIL_BYTES:].rstrip()


def stop(home: Path) -> int | None:
    """SIGTERM to the daemon on `home`'s control socket, then wait for it to exit; its pid, or None
    if none runs."""
    path = socket_path(home)
    pid = listener_pid(path)
    if pid is None:
        if answers(path):
            raise DaemonError(f"a server answers on {path} but the system does not say which process it is")
        return None
    try:
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    except PermissionError:
        raise DaemonError(f"the daemon on {path} (pid {pid}) belongs to another user") from None
    try:
        ready, _, _ = select.select([pidfd], [], [], STOP_TIMEOUT_S)  # readable once it has exited
    finally:
        os.close(pidfd)
    if not ready:
        raise DaemonError(f"the daemon (pid {pid}) did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM")
    return pid


def status(home: Path) -> dict[str, object]:
    """What the daemon on `home`'s control socket says of itself: pid, socket, version."""
    path = socket_path(home)
    try:
        sock = connect(str(path), timeout=PROBE_TIMEOUT_S * 10)
    except ProxyError:
        return {"running": False, "socket": str(path)}
    with sock:
        pid = _peer_pid(sock)
        try:
            reader = upgrade(sock, str(path))
        except ProxyError as exc:
            raise DaemonError(str(exc)) from None
        result = _initialize(sock, reader)
    agent = str(result.get("userAgent", ""))
    protocol = agent.split("/", 1)[1].split()[0] if "/" in agent else None
    version = agent.split("(spindle ", 1)[1].split(";", 1)[0] if "(spindle " in agent else None
    return {
        "running": True, "pid": pid, "socket": str(path), "version": version, "protocolVersion": protocol,
        "server": agent.split("/", 1)[0] or None, "codexHome": result.get("codexHome"),
    }


def _initialize(sock: socket.socket, reader: ws.FrameReader) -> dict[str, object]:
    """The server's `initialize` result, asked on a fresh connection (closed after)."""
    request = {"id": STATUS_REQUEST_ID, "method": "initialize",
               "params": {"clientInfo": {"name": "spindle-daemon-status", "version": "1"}}}
    sock.setblocking(True)
    sock.settimeout(PROBE_TIMEOUT_S * 10)
    try:
        sock.sendall(ws.encode_frame(ws.TEXT, json.dumps(request).encode()))
        while True:
            while (event := reader.next_event()) is not None:
                if isinstance(event, ws.Message) and event.opcode == ws.TEXT:
                    message = json.loads(event.payload)
                    if message.get("id") == STATUS_REQUEST_ID:
                        sock.sendall(ws.encode_frame(ws.CLOSE, ws.close_payload()))
                        return dict(message.get("result") or {})
            data = sock.recv(64 * 1024)
            if not data:
                raise DaemonError("the daemon closed the connection before answering initialize")
            reader.receive_data(data)
    except (OSError, ws.WebSocketError, ValueError) as exc:
        raise DaemonError(f"the daemon did not answer initialize: {exc}") from None
