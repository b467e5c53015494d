"""Running a process: bounded capture while it prints, streaming, timeout and cancellation kill its group."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import trio

from spindle.actors.runtime import execution
from spindle.actors.runtime.execution import BoundedCapture, run_process
from spindle.actors.runtime.sandbox import Plan
from spindle.protocol.sandbox import SandboxSpec

from .sandbox_helpers import needs_bwrap, out, sh, workspace


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def sleeper() -> tuple[str, str]:
    """A unique `sleep` duration to find its processes by, and a script that starts it as a
    grandchild in the background and waits."""
    seconds = f"{300 + uuid.uuid4().int % 10_000}.{uuid.uuid4().int % 10_000:04d}"
    return seconds, f"(sleep {seconds}; echo late) & echo started; wait"


async def test_a_timeout_kills_the_whole_group_and_reports_124(tmp_path: Path) -> None:
    seconds, script = sleeper()
    result = await sh(SandboxSpec(full_access=True), script, str(tmp_path), timeout_s=1.0)
    assert result.timed_out and result.exit_code == execution.TIMEOUT_EXIT_CODE
    assert out(result) == "started\n"
    assert processes_with(f"sleep {seconds}") == []


@needs_bwrap
async def test_a_timeout_kills_everything_the_sandboxed_command_started(tmp_path: Path) -> None:
    seconds, script = sleeper()
    escape = f"setsid sleep {seconds}0 & {script}"  # even one that left the process group
    result = await sh(workspace(str(tmp_path)), escape, str(tmp_path), timeout_s=1.0)
    assert result.timed_out and result.exit_code == 124
    with trio.fail_after(5):  # the kernel tears the sandbox's PID namespace down as bwrap exits
        while processes_with(seconds):  # noqa: ASYNC110 - processes of another parent: nothing to wait on
            await trio.sleep(0.05)


async def test_cancelling_the_caller_kills_the_group(tmp_path: Path) -> None:
    seconds, script = sleeper()
    with trio.move_on_after(1.0) as scope:
        await sh(SandboxSpec(full_access=True), script, str(tmp_path), timeout_s=None)
    assert scope.cancelled_caught
    assert processes_with(f"sleep {seconds}") == []


async def test_output_is_bounded_while_it_is_captured(tmp_path: Path) -> None:
    size = 50_000_000
    capture = BoundedCapture()
    high_water = 0

    def watch(chunk: bytes) -> None:
        nonlocal high_water
        high_water = max(high_water, capture.held)

    plan = Plan(command=["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' a; echo; echo the-end"])
    result = await run_process(plan, cwd=str(tmp_path), on_output=watch, capture=capture)
    assert result.exit_code == 0
    assert capture.total == size + len("\nthe-end\n")
    assert high_water <= execution.CAPTURE_HEAD_BYTES + execution.CAPTURE_TAIL_BYTES
    text = capture.text()
    assert text.startswith("a" * 1000) and text.endswith("a\nthe-end\n")
    assert f"[… {capture.total - capture.held} bytes elided …]" in text


async def test_every_chunk_is_streamed_in_order(tmp_path: Path) -> None:
    chunks: list[bytes] = []
    plan = Plan(command=["sh", "-c", "for i in 1 2 3; do echo line $i; done; echo err >&2; exit 3"])
    result = await run_process(plan, cwd=str(tmp_path), on_output=chunks.append)
    assert b"".join(chunks) == b"line 1\nline 2\nline 3\nerr\n"
    assert result.exit_code == 3 and not result.timed_out


async def test_a_process_killed_by_a_signal_exits_128_plus_its_number(tmp_path: Path) -> None:
    result = await run_process(Plan(command=["sh", "-c", "kill -KILL $$"]), cwd=str(tmp_path))
    assert result.exit_code == 128 + 9


def test_the_capture_keeps_head_and_tail() -> None:
    capture = BoundedCapture(head=4, tail=4)
    for piece in (b"ab", b"cdef", b"ghij", b"k"):
        capture.feed(piece)
    assert (bytes(capture.head), bytes(capture.tail), capture.total) == (b"abcd", b"hijk", 11)
    assert capture.text() == "abcd\n[… 3 bytes elided …]\nhijk"
