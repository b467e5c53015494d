"""Where a Codex app-server daemon lives under CODEX_HOME: the names Codex 0.171 uses, stdlib only
(the proxy reads them before anything heavy is imported)."""

from __future__ import annotations

import os
from pathlib import Path, PurePath

CONTROL_SOCKET = PurePath("app-server-control", "app-server-control.sock")
"""Where, under CODEX_HOME, `unix://` listens (and where a plain `codex` looks for a server)."""
STARTUP_LOCK = PurePath("app-server-control", "app-server-startup.lock")
"""The file whose `flock` serializes starting a daemon, so concurrent starts make one."""
IDLE_EXIT_S = 600.0
"""A daemon started by Spindle exits after this long with no client connected (`--idle-exit`)."""
DAEMON_LOG = PurePath("log", "app-server-daemon.log")
"""Where a daemon started by `spindle app-server daemon start` (or a proxy) writes its stderr."""


def codex_home() -> Path:
    """`$CODEX_HOME`, default `~/.codex` (as the runtime's `codex_home`)."""
    env = os.environ.get("CODEX_HOME")
    return Path(env).expanduser() if env else Path.home() / ".codex"
