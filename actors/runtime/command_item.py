"""A command run as a `CommandExecution` item: what the model's `exec_command` and the user's own
shell command (`user_shell.py`) share.

`run_command_item` runs a ready `Plan` (`execution.run_process`: bounded capture, timeout, group
kill) and reports it as one item: started once its process is (with its process id), its output
streamed as text deltas (never splitting a UTF-8 character, at most `MAX_DELTA_BYTES`), completed
with the output kept, the exit code and the duration. The command's environment is the server's
without its secrets, for a pipe rather than a terminal (`command_env`).
"""

from __future__ import annotations

import codecs
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from spindle.protocol.events import (
    EventMsg,
    ExecCommandOutputDeltaEvent,
    ItemCompletedEvent,
    ItemStartedEvent,
)
from spindle.protocol.items import CommandExecutionItem, TurnItem

from .execution import BoundedCapture, ExecResult, run_process
from .sandbox import Plan

MAX_DELTA_BYTES = 1024 * 1024
"""Output streamed as deltas per command; past it the completed item still carries head and tail."""
COMMAND_ENV = {"NO_COLOR": "1", "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat"}
"""Set for every command: its output goes to a pipe and to a model, not to a terminal."""
SECRET_MARKERS = ("KEY", "SECRET", "TOKEN")
"""A variable whose name holds one of these (any case) is not passed to commands: Codex's
default excludes of `shell_environment_policy`, so provider API keys never reach the model."""


def command_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment as a command gets it: without secrets, set for a pipe."""
    return {**{name: value for name, value in environ.items() if not any(m in name.upper() for m in SECRET_MARKERS)},
            **COMMAND_ENV}


def find_shell(name: str = "bash") -> str | None:
    """The path of shell `name` on PATH, None if there is none (a filesystem lookup: run it in a
    worker thread)."""
    return shutil.which(name)


@dataclass(frozen=True, kw_only=True)
class ItemEvents:
    """Where a command item's lifecycle and output go (a turn's subscribers)."""

    started: Callable[[TurnItem], None]
    completed: Callable[[TurnItem], None]
    output_delta: Callable[[str, str], None]
    """(item id, text)."""

    @classmethod
    def of(cls, emit: Callable[[str, EventMsg], None], *, sub_id: str, thread_id: str, turn_id: str) -> ItemEvents:
        """As events of turn `turn_id`, emitted under submission `sub_id`."""
        return cls(
            started=lambda item: emit(sub_id, ItemStartedEvent(thread_id=thread_id, turn_id=turn_id, item=item)),
            completed=lambda item: emit(sub_id, ItemCompletedEvent(thread_id=thread_id, turn_id=turn_id, item=item)),
            output_delta=lambda item_id, delta: emit(sub_id, ExecCommandOutputDeltaEvent(item_id=item_id, delta=delta)),
        )


def end_unrun(events: ItemEvents, item: CommandExecutionItem, status: Literal["failed", "declined"],
              output: str | None) -> None:
    """End an item whose command did not run: started and completed at once."""
    events.started(item)
    events.completed(msgspec.structs.replace(item, status=status, aggregated_output=output))


async def run_command_item(
    ready: Plan, item: CommandExecutionItem, events: ItemEvents, *, cwd: str, env: Mapping[str, str],
    timeout_s: float | None,
) -> ExecResult:
    """Run `ready` in `cwd` as `item` and return how it ended. A run cut short by cancellation (an
    interrupt) completes the item `failed` with what it printed, then the cancellation goes on.
    Raises OSError, the item not started, when the process cannot be started."""
    stream = _DeltaStream(events.output_delta, item.id)
    started = False

    def on_start(pid: int) -> None:
        nonlocal item, started
        item = msgspec.structs.replace(item, process_id=str(pid))
        started = True
        events.started(item)

    capture = BoundedCapture()
    began = time.monotonic()
    ended = False
    try:
        result = await run_process(ready, cwd=cwd, env=env, timeout_s=timeout_s, on_output=stream.feed,
                                   on_start=on_start, capture=capture)
        ended = True
    finally:
        if not ended and started:  # cancelled: the group is killed; the item still ends
            events.completed(msgspec.structs.replace(
                item, status="failed", aggregated_output=capture.text(),
                duration_ms=math.floor((time.monotonic() - began) * 1000),
            ))
    stream.flush()
    events.completed(msgspec.structs.replace(
        item,
        status="completed" if result.exit_code == 0 else "failed",
        aggregated_output=result.output.text(),
        exit_code=result.exit_code,
        duration_ms=math.floor(result.duration_s * 1000),
    ))
    return result


class _DeltaStream:
    """Turns output bytes into text deltas (never splitting a UTF-8 character), up to a cap."""

    def __init__(self, emit: Callable[[str, str], None], item_id: str) -> None:
        self._emit_delta = emit
        self._item_id = item_id
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._sent = 0

    def feed(self, chunk: bytes) -> None:
        if self._sent >= MAX_DELTA_BYTES:
            return
        chunk = chunk[: MAX_DELTA_BYTES - self._sent]
        self._sent += len(chunk)
        self._emit(self._decoder.decode(chunk))

    def flush(self) -> None:
        self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, text: str) -> None:
        if text:
            self._emit_delta(self._item_id, text)
