"""Running one process with bounded capture, streaming, a timeout and group kill.

`run_process` starts the process in a new session (its own process group), reads its merged
stdout and stderr as it arrives, hands each chunk to `on_output`, and keeps at most a head and a
tail of it in memory (`BoundedCapture`) however much it prints. When the timeout passes, or the
caller is cancelled (a turn interrupt), the whole group gets SIGTERM, then SIGKILL after
`KILL_GRACE_S`; a timed-out run reports exit code 124. A sandboxed command runs under bubblewrap
in its own PID namespace, so killing the group ends everything it started, daemonised or not.
Without the sandbox, a descendant that left the group (`setsid`) is out of reach.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from .sandbox import Plan

READ_CHUNK = 65536
CAPTURE_HEAD_BYTES = 32 * 1024
CAPTURE_TAIL_BYTES = 32 * 1024
KILL_GRACE_S = 0.5
"""After SIGTERM, how long the group has before SIGKILL."""
DRAIN_AFTER_EXIT_S = 0.2
"""After the process exits, how long descendants holding its output open may still write."""
TIMEOUT_EXIT_CODE = 124
"""The exit code of a run that outlived its timeout (as `timeout(1)` reports it)."""


class BoundedCapture:
    """The first `head` and the last `tail` bytes of a stream, and how many bytes it had."""

    def __init__(self, head: int = CAPTURE_HEAD_BYTES, tail: int = CAPTURE_TAIL_BYTES) -> None:
        self._head_limit = head
        self._tail_limit = tail
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        if len(chunk) >= self._tail_limit:
            self.tail[:] = chunk[len(chunk) - self._tail_limit:]
        else:
            self.tail += chunk
            excess = len(self.tail) - self._tail_limit
            if excess > 0:
                del self.tail[:excess]

    @property
    def elided(self) -> int:
        """Bytes seen but not kept."""
        return self.total - len(self.head) - len(self.tail)

    @property
    def held(self) -> int:
        """Bytes kept in memory."""
        return len(self.head) + len(self.tail)

    def text(self) -> str:
        """What was kept, as text; the gap marked with how many bytes were dropped."""
        head = self.head.decode("utf-8", "replace")
        if not self.elided:
            return head + self.tail.decode("utf-8", "replace")
        return f"{head}\n[… {self.elided} bytes elided …]\n{self.tail.decode('utf-8', 'replace')}"


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    """How a process ended: its exit code (128 + n when killed by signal n; 124 on timeout)."""

    exit_code: int
    output: BoundedCapture
    duration_s: float
    timed_out: bool = False
    pid: int | None = None


async def run_process(
    plan: Plan,
    *,
    cwd: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    on_output: Callable[[bytes], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    capture: BoundedCapture | None = None,
) -> ExecResult:
    """Run `plan` in `cwd` and wait for it. Raises OSError when it cannot be started."""
    capture = capture or BoundedCapture()
    full_env = {**(env if env is not None else os.environ), **plan.env}
    read_fd: int | None = None
    pass_fds: Sequence[int] = ()
    if plan.seccomp is not None:
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, plan.seccomp)  # a few hundred bytes: well under the pipe's buffer
        finally:
            os.close(write_fd)
        pass_fds = (read_fd,)
    started = time.monotonic()
    try:
        proc = await trio.lowlevel.open_process(
            plan.command_line(read_fd), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds,
        )
    finally:
        if read_fd is not None:
            os.close(read_fd)
    if on_start is not None:
        on_start(proc.pid)
    timed_out = False
    try:
        with trio.move_on_after(math.inf if timeout_s is None else timeout_s) as scope:
            await _pump(proc, capture, on_output)
        timed_out = scope.cancelled_caught
    finally:
        if proc.returncode is None or timed_out:
            with trio.CancelScope(shield=True):
                await _kill_group(proc)
        assert proc.stdout is not None
        with trio.CancelScope(shield=True):
            await proc.stdout.aclose()
    elapsed = time.monotonic() - started
    code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    if timed_out:
        code = TIMEOUT_EXIT_CODE
    elif code < 0:
        code = 128 - code
    return ExecResult(exit_code=code, output=capture, duration_s=elapsed, timed_out=timed_out, pid=proc.pid)


async def _pump(proc: trio.Process, capture: BoundedCapture, on_output: Callable[[bytes], None] | None) -> None:
    """Read until the process has exited and its output is closed (or stays open too long after)."""
    stdout = proc.stdout
    assert stdout is not None

    async def read_all() -> None:
        while chunk := await stdout.receive_some(READ_CHUNK):
            capture.feed(chunk)
            if on_output is not None:
                on_output(chunk)

    async with trio.open_nursery() as nursery:
        eof = trio.Event()

        async def reader() -> None:
            await read_all()
            eof.set()

        nursery.start_soon(reader)
        await proc.wait()
        with trio.move_on_after(DRAIN_AFTER_EXIT_S):
            await eof.wait()
        if not eof.is_set():
            _signal_group(proc.pid, signal.SIGKILL)  # descendants still hold the output open
        nursery.cancel_scope.cancel()


async def _kill_group(proc: trio.Process) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    with trio.move_on_after(KILL_GRACE_S):
        await proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)
    with trio.move_on_after(KILL_GRACE_S * 4):
        await proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and its id reused by someone else's
        pass
