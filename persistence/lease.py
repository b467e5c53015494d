"""Writer leases: one writer per thread, across every process using one CODEX_HOME, Codex included.

Before a thread's writer appends, it holds an exclusive `flock` on
`$CODEX_HOME/thread-writer-locks/<thread id>.lock` until its rollout is closed (the thread
unloaded, unsubscribed to zero, archived or shut down). The scheme is the real Codex's, so the
two exclude each other:
- taking a lease: lock `.coordination.lock` in that folder, open (create) `<id>.lock`, `flock` it
  without waiting, let go of the coordination lock;
- letting go: lock `.coordination.lock`, close and delete `<id>.lock`, let go of it.
Every create and delete happens under the coordination lock, so no process can lock a file another
has just deleted. The kernel drops a `flock` when its holder's file is closed or its process
ends, however it ends, so a lock file left behind by a crash never blocks anyone.

Spindle writes the holder's name into the lock file (`LeaseHolder`: pid, since when, host, and its
handoff address); Codex leaves its files empty, so for a holder that says nothing the pid comes
from `/proc/locks`. A Spindle holder answers handoff requests (`HandoffRequest`, one JSON line on
its Unix socket; `HandoffReply` back): it flushes, closes the rollout and lets go, unless a turn
is running. The functions here block; the thread store calls them from worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import structlog

from spindle.protocol.ids import parse_thread_id

from .paths import ThreadStoreError, ThreadStoreUnavailableError, store_error, timestamp

log = structlog.get_logger(__name__)

LOCKS_SUBDIR = "thread-writer-locks"
COORDINATION_FILE = ".coordination.lock"
COORDINATION_WAIT_S = 30.0
"""How long taking or letting go of a lease waits for another process's coordination lock."""
COORDINATION_POLL_S = 0.005
HOLDER_MAX_BYTES = 4096
LOCK_ATTEMPTS = 5
"""How much of a lock file is read to name its holder."""


class LeaseHolder(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Who holds a thread's writer lease, as its lock file says."""

    pid: int | None = None
    since: str | None = None
    owner: str | None = None
    host: str | None = None
    handoff: str | None = None
    """Where the holder takes handoff requests: a Unix socket path, or `@name` (abstract)."""

    def describe(self) -> str:
        if self.pid is None:
            return "another process (it did not say which)"
        who = f"{self.owner or 'process'} pid {self.pid}"
        if self.host and self.host != socket.gethostname():
            who += f" on {self.host}"
        return f"{who} since {self.since}" if self.since else who


class WriterLeaseHeldError(ThreadStoreError):
    """Another writer holds the thread's lease; `holder` names it."""

    def __init__(self, thread_id: str, holder: LeaseHolder, *, detail: str = "") -> None:
        self.thread_id = thread_id
        self.holder = holder
        hint = (
            "ask it to let go (thread/resume with `handoff: true`, or resume_thread(handoff=True)), or stop it"
            if holder.handoff
            else "stop that process, or wait until it unloads the thread"
        )
        super().__init__(
            f"thread {thread_id} is being written by {holder.describe()}; {detail or hint}"
        )


class HandoffRequest(msgspec.Struct, kw_only=True, frozen=True):
    """Asks a lease holder to let go of `release` (a thread id)."""

    release: str


class HandoffReply(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    released: bool
    reason: str | None = None
    """Why the holder kept the thread (a turn is running, it is not loaded here)."""


_holder_decoder = msgspec.json.Decoder(LeaseHolder)
_encoder = msgspec.json.Encoder()


def lock_path(home: Path, thread_id: str) -> Path:
    return home / LOCKS_SUBDIR / f"{parse_thread_id(thread_id)}.lock"


class WriterLease:
    """A held writer lease: the open, locked lock file. `release()` lets go (idempotent)."""

    def __init__(self, thread_id: str, path: Path, fd: int, holder: LeaseHolder, home: Path) -> None:
        self.thread_id = thread_id
        self.path = path
        self.holder = holder
        self.home = home
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file and close it, which drops the lock (under the coordination lock,
        waiting for it if need be: letting go must not fail). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with _coordination(self.home, wait=True):
                try:
                    self.path.unlink()
                except OSError:
                    pass  # the lock goes with the descriptor whether or not the file does
                os.close(fd)
                fd = None
        except ThreadStoreError as exc:  # the folder stayed locked: the file stays, the lock goes
            log.warning("left a writer lock file behind", path=str(self.path), error=str(exc))
        finally:
            if fd is not None:
                os.close(fd)

    def __repr__(self) -> str:
        return f"WriterLease({self.thread_id}, held={self.held})"


class CoordinationBusy(Exception):
    """Another process holds the coordination lock for a moment; try again shortly."""


def acquire_lease(home: Path, thread_id: str, *, handoff: str | None = None) -> WriterLease:
    """Take the writer lease of `thread_id` now: WriterLeaseHeldError naming the holder if another
    has it; CoordinationBusy if the coordination lock is held right now (retry after a pause).

    `handoff` is this process's handoff address, written for others to find."""
    tid = parse_thread_id(thread_id)
    path = lock_path(home, tid)
    with _coordination(home):
        fd = _lock_file(home, tid, path)
        holder = LeaseHolder(pid=os.getpid(), since=timestamp(), owner="spindle", host=socket.gethostname(), handoff=handoff)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _encoder.encode(holder) + b"\n", 0)
        except OSError:
            pass  # held all the same; others just cannot tell who holds it
    return WriterLease(tid, path, fd, holder, home)


def _lock_file(home: Path, tid: str, path: Path) -> int:
    """Open and `flock` the lease file; retried if it was deleted or replaced meanwhile by a
    process that does not take the coordination lock, so the lock is on the file of that name."""
    for _ in range(LOCK_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise store_error("open the writer lock", path, exc, home=home) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder_of(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WriterLeaseHeldError(tid, holder) from None
            raise ThreadStoreUnavailableError(f"cannot lock {path}: {exc.strerror}") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)
    raise ThreadStoreUnavailableError(f"cannot lock {path}: something keeps deleting or replacing it")


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def _coordination(home: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the folder's coordination lock for the `with` body. Taken: CoordinationBusy, or with
    `wait`, polled for up to `COORDINATION_WAIT_S` (this runs in a worker thread)."""
    path = home / LOCKS_SUBDIR / COORDINATION_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise store_error("open the writer lock folder's", path, exc, home=home) from None
    try:
        deadline = time.monotonic() + COORDINATION_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise CoordinationBusy() from None
                if time.monotonic() > deadline:
                    raise coordination_stuck(home) from None
                time.sleep(COORDINATION_POLL_S)
        yield
    finally:
        os.close(fd)


def coordination_stuck(home: Path) -> ThreadStoreUnavailableError:
    return ThreadStoreUnavailableError(
        f"the writer lock folder {home / LOCKS_SUBDIR} stayed locked for {COORDINATION_WAIT_S:g} s;"
        " another process may be suspended while holding it"
    )


def _holder_of(fd: int) -> LeaseHolder:
    """Who holds the lock: `/proc/locks` names the pid where it can; the file's own note (Spindle
    writes one, Codex does not) counts only when it names that pid, since a crashed Spindle's note
    outlives it in a file Codex then locks without rewriting."""
    noted = LeaseHolder()
    try:
        data = os.pread(fd, HOLDER_MAX_BYTES, 0).strip()
        if data:
            noted = _holder_decoder.decode(data)
    except (OSError, msgspec.DecodeError):
        pass
    try:
        st = os.fstat(fd)
        pid = _flock_holder_pid(st.st_dev, st.st_ino)
    except OSError:
        return noted
    if pid is None or pid == noted.pid:
        return noted
    return LeaseHolder(pid=pid, owner=_process_name(pid), since=timestamp(datetime.fromtimestamp(st.st_mtime, UTC)))


def _flock_holder_pid(dev: int, ino: int) -> int | None:
    """The pid `/proc/locks` names for a FLOCK on the file (dev, ino), if any (Linux only)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want and fields[4].isdigit():
            return int(fields[4])
    return None


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None
