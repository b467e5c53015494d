"""The user's own shell command (`thread/shellCommand`, the `run_user_shell_command` op), as
codex-rs `run_user_shell_command` and its `UserShellCommandTask` run it.

The command string runs through the thread's shell (`bash -lc`, full shell syntax) in the thread's
cwd, unsandboxed, with full access: it is the user's own command, as Codex documents it. It is one
`CommandExecution` item with `source: userShell`, run as the model's commands are
(`command_item.run_command_item`: streamed output deltas, bounded capture, group kill) under a
timeout (`timeout_ms`, one hour by default; exit code 124 when it passes).

On an idle thread it is a turn of its own (`UserShellCommandTask`) that samples no model, unless
the user's input joins it meanwhile. While a turn runs it joins that turn as auxiliary work
(`Turn.auxiliaries`): its item belongs to that turn and an interrupt of the turn ends it.

The model sees it next: its record, a user message `<user_shell_command>` with the command and
its result (Codex's form), goes into the running turn's history before that turn's next sample
(`Turn.injected`), or straight into the history when no turn runs.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable
from typing import Protocol

import trio

from spindle.protocol.events import ErrorEvent
from spindle.protocol.ids import new_id
from spindle.protocol.items import CommandExecutionItem, InputText, Message, UserInput
from spindle.protocol.ops import RunUserShellCommandOp

from .command_item import command_env, end_unrun, find_shell, run_command_item
from .exec_command import DEFAULT_MAX_OUTPUT_TOKENS, truncate_tokens
from .execution import ExecResult
from .journal import ThreadJournal
from .outcomes import OutcomeBook
from .sandbox import Plan
from .turn import Task, Turn, TurnHost, item_events, run_turn

USER_SHELL_TIMEOUT_S = 60 * 60.0
"""How long a user's shell command may run when the request names no timeout (Codex's hour)."""
ABORTED = "command aborted by user"
"""What the model reads of a command an interrupt ended (Codex's words)."""


class ShellHost(TurnHost, Protocol):
    """What a user's shell command needs from its thread (the thread actor)."""

    outcomes: OutcomeBook
    journal: ThreadJournal

    @property
    def active_turn(self) -> Turn | None: ...

    async def start_task(self, sub_id: str, task: Task, items: list[UserInput] | None = None) -> Turn | None: ...


class UserShellCommandTask:
    """A turn that runs the user's command and samples no model; input the user sends meanwhile
    joins it, and is then answered in it."""

    kind = "user_shell"
    steerable = True  # input sent while it runs is answered by the model in the same turn

    def __init__(self, command: str, timeout_ms: int | None = None) -> None:
        self.command = command
        self.timeout_ms = timeout_ms

    async def run(self, turn: Turn, host: TurnHost) -> str | None:
        await run_user_command(turn, host, self.command, self.timeout_ms, keep=turn.injected.append)
        if not turn.pending:
            return None
        await host.commit(turn.take_injected())  # the command was asked for first
        return await run_turn(turn, host)


async def run_user_shell_command(host: ShellHost, nursery: trio.Nursery, sub_id: str, op: RunUserShellCommandOp) -> None:
    """Dispatch `op`: join the running turn (as auxiliary work in `nursery`), else start a turn."""
    command = op.command.strip()
    refused = "command must not be empty" if not command else None
    if op.timeout_ms is not None and op.timeout_ms < 0:
        refused = f"timeout_ms must be non-negative, got {op.timeout_ms}"
    if refused is not None:
        host.emit(sub_id, ErrorEvent(message=refused, codex_error_info="bad_request"))
        return
    turn = host.active_turn
    if turn is None:
        await host.start_task(sub_id, UserShellCommandTask(command, op.timeout_ms))
        return

    def keep(record: Message) -> None:
        """The turn it joined may have ended: the record goes to the turn running now, else
        into the history."""
        if (current := host.active_turn) is not None:
            current.injected.append(record)
        else:
            host.journal.append([record])

    async def joined() -> None:
        await run_user_command(turn, host, command, op.timeout_ms, keep=keep)
        if host.active_turn is None:
            await host.journal.rollout.drain()

    turn.auxiliaries.start(nursery, joined)
    host.outcomes.set_turn(sub_id, turn.turn_id)


async def run_user_command(turn: Turn, host: TurnHost, command: str, timeout_ms: int | None, *,
                           keep: Callable[[Message], None]) -> None:
    """Run `command` as an item of `turn`; its record for the model goes to `keep`, also when an
    interrupt cuts it short."""
    cwd = turn.settings.cwd
    shell = await trio.to_thread.run_sync(find_shell) or "bash"
    argv = [shell, "-lc", command]
    item = CommandExecutionItem(id=new_id(), command=shlex.join(argv), cwd=cwd, status="inProgress",
                                source="userShell", actions=[command])
    events = item_events(turn, host)
    timeout_s = USER_SHELL_TIMEOUT_S if timeout_ms is None else timeout_ms / 1000
    record = shell_record(command, exit_code=-1, duration_s=0.0, output=ABORTED)  # unless it ends on its own
    try:
        result = await run_command_item(Plan(command=argv), item, events, cwd=cwd, env=command_env(os.environ),
                                        timeout_s=timeout_s)
        record = shell_record(command, exit_code=result.exit_code, duration_s=result.duration_s,
                              output=_for_model(result))
    except OSError as exc:
        message = f"execution error: {exc}"
        end_unrun(events, item, "failed", message)
        record = shell_record(command, exit_code=-1, duration_s=0.0, output=message)
    finally:
        keep(record)


def _for_model(result: ExecResult) -> str:
    """The output as the model reads it: a timeout said first (Codex's words), then the output
    kept, cut to the model's output budget."""
    text = result.output.text()
    if result.timed_out:
        text = f"command timed out after {math.floor(result.duration_s * 1000)} milliseconds\n{text}"
    return truncate_tokens(text, DEFAULT_MAX_OUTPUT_TOKENS)


def shell_record(command: str, *, exit_code: int, duration_s: float, output: str) -> Message:
    """The history's record of a user's shell command, in Codex's form."""
    text = "\n".join([
        "<user_shell_command>", "<command>", command, "</command>", "<result>", f"Exit code: {exit_code}",
        f"Duration: {duration_s:.4f} seconds", "Output:", output, "</result>", "</user_shell_command>",
    ])
    return Message(role="user", content=[InputText(text=text)])
