"""The Unix socket a `unix://` listener serves on: made 0600 from the start, a stale one replaced,
a live one left alone.

The socket is bound inside a fresh private (0700) folder next to its path, made 0600 there and
then renamed onto the path, so it is never reachable with looser permissions and a stale socket
(or Codex's symlink to one) is replaced in one step. A path on which something answers is
refused: two servers never share one control socket.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
from pathlib import Path

import structlog
import trio

log = structlog.get_logger(__name__)

BACKLOG = 128
"""Connections the kernel queues for the socket before the server accepts them."""
PROBE_S = 1.0
"""How long the check of an existing socket waits for it to answer."""
MAX_PATH_BYTES = 107
"""Longest socket path a client can connect to (`sun_path` holds 108 bytes with its NUL)."""
_GONE = frozenset({errno.ECONNREFUSED, errno.ENOENT})
"""A connect to an existing socket path failed this way: nothing listens there."""


class SocketPathError(Exception):
    """The socket path cannot be listened on; the message names it and says why."""


class UnixSocket:
    """A listening Unix socket at `path`, which `close` removes if it is still this one."""

    def __init__(self, path: Path, listener: trio.SocketListener, identity: tuple[int, int]) -> None:
        self.path = path
        self.listener = listener
        self._identity = identity

    async def close(self) -> None:
        await self.listener.aclose()
        await trio.to_thread.run_sync(self._remove)

    def _remove(self) -> None:
        try:
            found = os.lstat(self.path)
        except OSError:
            return
        if (found.st_dev, found.st_ino) == self._identity:  # not replaced by another server since
            self.path.unlink(missing_ok=True)


async def bind_unix(path: Path) -> UnixSocket:
    """Listen on a new socket at `path` (its folder made 0700 if missing); SocketPathError if
    another server answers there, or the path is something other than a socket or a symlink."""
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise SocketPathError(f"{path}: a Unix socket path may be at most {MAX_PATH_BYTES} bytes; listen on a shorter one")
    if await trio.to_thread.run_sync(_occupied, path):
        await _check_stale(path)
        log.info("replacing a stale socket", path=str(path))
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        identity = await _bind_private(sock, path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return UnixSocket(path, trio.SocketListener(sock), identity)


def _occupied(path: Path) -> bool:
    """Whether a socket (or a symlink) is at `path`, its folder made if missing; SocketPathError
    if something else is."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SocketPathError(f"cannot listen on {path}: {exc.strerror}") from None
    if not (stat.S_ISSOCK(mode) or stat.S_ISLNK(mode)):
        raise SocketPathError(f"{path} exists and is not a socket; remove it or listen on another path")
    return True


async def _check_stale(path: Path) -> None:
    """Return if nothing answers on the socket at `path`."""
    with trio.move_on_after(PROBE_S):
        try:
            probe = await trio.open_unix_socket(str(path))
        except OSError as exc:
            if exc.errno in _GONE:
                return
            raise SocketPathError(f"{path} is in use ({exc.strerror}); stop the server there or listen on another path") from None
        await probe.aclose()
    raise SocketPathError(f"another server is listening on {path}; stop it or listen on another path")


async def _bind_private(sock: trio.socket.SocketType, path: Path) -> tuple[int, int]:
    """Bind `sock` in a private folder beside `path`, make it 0600, move it onto `path`."""
    private = Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix=".spindle-", dir=path.parent)))  # 0700
    staged = private / "s"
    try:
        await sock.bind(str(staged))
        return await trio.to_thread.run_sync(_publish, staged, path)
    except OSError as exc:
        raise SocketPathError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        await trio.to_thread.run_sync(_discard, private)


def _publish(staged: Path, path: Path) -> tuple[int, int]:
    os.chmod(staged, 0o600)
    os.replace(staged, path)
    found = os.lstat(path)
    return found.st_dev, found.st_ino


def _discard(private: Path) -> None:
    (private / "s").unlink(missing_ok=True)
    private.rmdir()
