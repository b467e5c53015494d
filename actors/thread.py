"""The thread actor: one Trio task per conversation, taking `Submission`s strictly in order.

Twin of codex-rs `submission_loop`. Ops arrive on a bounded memory channel; events go to every
subscriber through a lossy `Broadcaster`. A turn runs in its own cancel scope inside the actor's
nursery, so an interrupt (or shutdown) cancels it, and the turn always ends with `turn_aborted`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import structlog
import trio
from trio_typing import TaskStatus

from persistence.history import rebuild_history
from persistence.policy import should_persist_event
from persistence.writer import ThreadRollout
from protocol.events import (
    ErrorEvent,
    Event,
    EventMsg,
    ItemCompletedEvent,
    ItemStartedEvent,
    SessionConfiguredEvent,
    ShutdownCompleteEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    ThreadRolledBackEvent,
    TokenUsage,
    TokenUsageInfo,
    TurnAbortedEvent,
    WarningEvent,
)
from protocol.ids import new_id
from protocol.items import (
    InputText,
    Message,
    ResponseItem,
    UserInput,
    UserMessageItem,
    close_dangling_calls,
    turn_aborted_marker,
    user_message,
)
from protocol.ops import (
    ApprovalPolicy,
    InterruptOp,
    Op,
    OverrideTurnContextOp,
    SandboxMode,
    ShutdownOp,
    Submission,
    ThreadRollbackOp,
    UserInputOp,
    UserTurnOp,
)
from protocol.ops import (
    TurnSettings as SettingsUpdate,
)
from protocol.rollout import SandboxPolicy, TurnContextItem

from .model_client import ModelClient
from .services import Services
from .subscriptions import Broadcaster
from .turn import Turn, TurnFailed, TurnSettings, run_turn

log = structlog.get_logger(__name__)

SUBMISSION_CAPACITY = 64
"""Submissions queued per thread before `submit` waits."""
PERSIST_DEADLINE_S = 10.0
"""How long an aborted turn's cleanup may spend handing its last items to the writer."""

INITIAL_SUB_ID = ""
DEFAULT_INSTRUCTIONS = (
    "You are a coding agent running in Spindle. Be precise, safe and helpful. Use the shell tool "
    "to inspect and change the workspace when the task needs it."
)


def environment_context(settings: TurnSettings) -> Message:
    """The initial context the model gets at a thread's first turn."""
    text = (
        "<environment_context>\n"
        f"  <cwd>{settings.cwd}</cwd>\n"
        f"  <approval_policy>{settings.approval_policy}</approval_policy>\n"
        f"  <sandbox_mode>{settings.sandbox_policy}</sandbox_mode>\n"
        "  <shell>bash</shell>\n"
        "</environment_context>"
    )
    return Message(role="user", content=[InputText(text=text)])


def turn_context_item(turn: Turn) -> TurnContextItem:
    s = turn.settings
    return TurnContextItem(
        turn_id=turn.turn_id,
        cwd=s.cwd,
        approval_policy=s.approval_policy,
        sandbox_policy=SandboxPolicy(type=s.sandbox_policy),
        model=s.model,
        effort=s.effort,
        summary=s.summary,
    )


@dataclass
class Receipt:
    """What the actor made of one submission, filled in once it has been dispatched.

    `turn_id` is the turn the submission started, joined (steered input) or interrupted; `error`
    the error event the submission drew while it was being dispatched, if any.
    """

    done: trio.Event = field(default_factory=trio.Event)
    turn_id: str | None = None
    error: ErrorEvent | None = None


@dataclass(frozen=True, kw_only=True)
class ThreadSettings:
    """A thread's current settings; `override_turn_context` and `user_turn` change them."""

    model: str
    provider_id: str
    cwd: str
    approval_policy: ApprovalPolicy
    sandbox_policy: SandboxMode
    instructions: str = DEFAULT_INSTRUCTIONS
    effort: str | None = None
    summary: str | None = None
    model_context_window: int | None = None

    def updated(self, update: SettingsUpdate) -> ThreadSettings:
        """These settings with `update` applied; ValueError names a field that cannot be used."""
        if update.cwd is not None and not os.path.isdir(update.cwd):
            raise ValueError(f"cwd {update.cwd!r} is not a directory")
        return replace(
            self,
            cwd=update.cwd or self.cwd,
            approval_policy=update.approval_policy or self.approval_policy,
            sandbox_policy=update.sandbox_policy or self.sandbox_policy,
            model=update.model or self.model,
            effort=update.effort if update.effort is not None else self.effort,
            summary=update.summary if update.summary is not None else self.summary,
        )

    def for_turn(self) -> TurnSettings:
        return TurnSettings(
            model=self.model,
            provider_id=self.provider_id,
            cwd=self.cwd,
            approval_policy=self.approval_policy,
            sandbox_policy=self.sandbox_policy,
            instructions=self.instructions,
            effort=self.effort,
            summary=self.summary,
            model_context_window=self.model_context_window,
        )


class ThreadActor:
    """The task behind one thread. Construct through `ThreadManager.start_thread`."""

    def __init__(
        self,
        *,
        thread_id: str,
        settings: ThreadSettings,
        services: Services,
        receive: trio.MemoryReceiveChannel[Submission],
        events: Broadcaster[Event],
        rollout: ThreadRollout,
        history: list[ResponseItem] | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.rollout = rollout
        rollout.on_error = lambda message: self._deliver(INITIAL_SUB_ID, ErrorEvent(message=message, codex_error_info="other"))
        self._context_seeded = bool(history)
        self.settings = settings
        self.services = services
        self.tools = services.tools
        self.history: list[ResponseItem] = history if history is not None else []
        self._receive = receive
        self._events = events
        self._active: Turn | None = None
        self._nursery: trio.Nursery | None = None
        self._usage_total = TokenUsage()
        self._receipts: dict[str, Receipt] = {}
        self.closed = trio.Event()

    # --- TurnHost -------------------------------------------------------
    def client(self, provider_id: str) -> ModelClient:
        return self.services.client(provider_id)

    def emit(self, sub_id: str, msg: EventMsg) -> None:
        """Record `msg` when the persistence policy keeps it, and deliver it to subscribers."""
        if should_persist_event(msg):
            self.rollout.record([msg])
        self._deliver(sub_id, msg)

    def _deliver(self, sub_id: str, msg: EventMsg) -> None:
        if isinstance(msg, ErrorEvent) and (receipt := self._receipts.get(sub_id)) is not None:
            receipt.error = receipt.error or msg
        self._events.publish(Event(id=sub_id, msg=msg))

    @contextmanager
    def expect(self, sub_id: str) -> Iterator[Receipt]:
        """A receipt for the submission `sub_id`, filled in when it has been dispatched; forgotten
        on exit, so a submission that never got there (timeout, closed thread) leaves nothing behind."""
        receipt = self._receipts[sub_id] = Receipt()
        try:
            yield receipt
        finally:
            self._receipts.pop(sub_id, None)

    @property
    def active_turn_id(self) -> str | None:
        return self._active.turn_id if self._active is not None else None

    async def commit_input(self, turn: Turn, sub_id: str, items: list[UserInput]) -> None:
        message = user_message(items)
        self.history.append(message)
        self.rollout.record([message])
        item = UserMessageItem(id=new_id(), content=items)
        self.emit(sub_id, ItemStartedEvent(thread_id=self.thread_id, turn_id=turn.turn_id, item=item))
        self.emit(sub_id, ItemCompletedEvent(thread_id=self.thread_id, turn_id=turn.turn_id, item=item))
        await self.rollout.drain()

    async def commit(self, items: list[ResponseItem]) -> None:
        self.history.extend(items)
        self.rollout.record(items)
        await self.rollout.drain()

    def add_usage(self, usage: TokenUsage, window: int | None) -> TokenUsageInfo:
        self._usage_total = self._usage_total + usage
        return TokenUsageInfo(total_token_usage=self._usage_total, last_token_usage=usage, model_context_window=window)

    # --- lifecycle ------------------------------------------------------
    def session_configured(self) -> SessionConfiguredEvent:
        s = self.settings
        return SessionConfiguredEvent(
            session_id=self.thread_id,
            model=s.model,
            model_provider_id=s.provider_id,
            cwd=s.cwd,
            approval_policy=s.approval_policy,
            sandbox_policy=s.sandbox_policy,
            rollout_path=None if self.rollout.ephemeral else str(self.rollout.path),
            forked_from_id=self.rollout.meta.forked_from_id,
        )

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with structlog.contextvars.bound_contextvars(thread_id=self.thread_id):
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.rollout.persisted:  # resumed or forked: append to the existing file
                        await self.rollout.start(nursery, create=False)
                    self.emit(INITIAL_SUB_ID, self.session_configured())
                    task_status.started()
                    await self._submission_loop()
            finally:
                self._events.close()
                for receipt in self._receipts.values():
                    receipt.error = receipt.error or ErrorEvent(message=f"thread {self.thread_id} has shut down")
                    receipt.done.set()
                self._receipts.clear()
                self.closed.set()

    async def _submission_loop(self) -> None:
        with self._receive:
            async for sub in self._receive:
                try:
                    if await self._dispatch(sub):
                        return
                finally:
                    if (receipt := self._receipts.pop(sub.id, None)) is not None:
                        receipt.done.set()
        log.debug("submission channel closed without shutdown")
        await self._abort_turn("interrupted")
        await self._close_rollout(INITIAL_SUB_ID)

    async def _close_rollout(self, sub_id: str) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self.rollout.shutdown()
        except (OSError, trio.TooSlowError) as exc:
            log.warning("failed to shut down thread persistence", error=str(exc))
            self._deliver(sub_id, ErrorEvent(message=f"Failed to shutdown thread persistence: {exc}", codex_error_info="other"))

    async def _dispatch(self, sub: Submission) -> bool:
        """Handle one submission; True when the actor should end."""
        match sub.op:
            case UserInputOp(items=items):
                await self._user_input(sub.id, items)
            case UserTurnOp(items=items):
                if self._apply_settings(sub.id, sub.op.settings()):
                    await self._user_input(sub.id, items)
            case OverrideTurnContextOp():
                self._apply_settings(sub.id, sub.op.settings())
            case InterruptOp():
                self._note_turn(sub.id, self.active_turn_id)
                await self._abort_turn("interrupted")
            case ShutdownOp():
                await self._abort_turn("interrupted")
                await self._close_rollout(sub.id)
                self.emit(sub.id, ShutdownCompleteEvent())
                return True
            case ThreadRollbackOp(num_turns=num_turns):
                await self._rollback(sub.id, num_turns)
            case _:
                self._unsupported(sub.id, sub.op)
        return False

    def _note_turn(self, sub_id: str, turn_id: str | None) -> None:
        if (receipt := self._receipts.get(sub_id)) is not None:
            receipt.turn_id = turn_id

    def _unsupported(self, sub_id: str, op: Op) -> None:
        tag = type(op).__struct_config__.tag
        self.emit(sub_id, ErrorEvent(message=f"op {tag!r} is not supported yet", codex_error_info="unsupported_operation"))

    def _apply_settings(self, sub_id: str, update: SettingsUpdate) -> bool:
        try:
            self.settings = self.settings.updated(update)
        except ValueError as exc:
            self.emit(sub_id, ErrorEvent(message=str(exc), codex_error_info="bad_request"))
            return False
        return True

    # --- turns ----------------------------------------------------------
    async def _user_input(self, sub_id: str, items: list[UserInput]) -> None:
        if not items:
            self.emit(sub_id, ErrorEvent(message="user input is empty", codex_error_info="bad_request"))
            return
        if self._active is not None:
            self._active.pending.append((sub_id, items))
            self._note_turn(sub_id, self._active.turn_id)
            return
        assert self._nursery is not None
        try:
            await self.rollout.materialize(self._nursery)
        except OSError as exc:
            self.emit(sub_id, ErrorEvent(message=f"failed to initialize rollout recorder: {exc}", codex_error_info="other"))
            return
        turn = Turn(turn_id=new_id(), sub_id=sub_id, settings=self.settings.for_turn())
        if not self._context_seeded:  # built at the first turn, so its overrides are in it
            context = environment_context(turn.settings)
            self.history.append(context)
            self.rollout.record([context])
            self._context_seeded = True
        self.rollout.record([turn_context_item(turn)])
        turn.pending.append((sub_id, items))
        self._note_turn(sub_id, turn.turn_id)
        self._active = turn
        self._nursery.start_soon(self._run_turn, turn)

    async def _run_turn(self, turn: Turn) -> None:
        finished = False
        last: str | None = None
        with structlog.contextvars.bound_contextvars(turn_id=turn.turn_id):
            self.emit(turn.sub_id, TaskStartedEvent(turn_id=turn.turn_id, model_context_window=turn.settings.model_context_window))
            try:
                with turn.scope:
                    try:
                        last = await run_turn(turn, self)
                    except TurnFailed as err:
                        log.info("turn failed", error=err.message)
                        self.emit(turn.sub_id, ErrorEvent(message=err.message, codex_error_info=err.info, turn_id=turn.turn_id))
                    finished = True
            finally:
                if finished:
                    self.emit(turn.sub_id, TaskCompleteEvent(turn_id=turn.turn_id, last_agent_message=last))
                else:
                    closing: list[ResponseItem] = [*close_dangling_calls(self.history), turn_aborted_marker()]
                    self.history.extend(closing)
                    self.rollout.record(closing)
                    self.emit(turn.sub_id, TurnAbortedEvent(turn_id=turn.turn_id, reason=turn.abort_reason))  # type: ignore[arg-type]
                self._active = None
                turn.done.set()
                with trio.move_on_after(PERSIST_DEADLINE_S) as cleanup:
                    cleanup.shield = True
                    await self.rollout.drain()
                self.rollout.touch()

    async def _abort_turn(self, reason: str) -> None:
        turn = self._active
        if turn is None:
            return
        turn.abort_reason = reason
        turn.scope.cancel()
        await turn.done.wait()

    async def _rollback(self, sub_id: str, num_turns: int) -> None:
        def fail(message: str) -> None:
            self.emit(sub_id, ErrorEvent(message=message, codex_error_info="thread_rollback_failed"))

        if num_turns == 0:
            return fail("num_turns must be >= 1")
        if self._active is not None:
            return fail("Cannot rollback while a turn is in progress.")
        if not self.rollout.persisted:
            return fail("thread rollback requires persisted thread history")
        try:
            await self.rollout.flush()
        except (OSError, trio.TooSlowError) as exc:
            return fail(f"failed to flush thread persistence for rollback replay: {exc}")
        marker = ThreadRolledBackEvent(num_turns=num_turns)
        self.history[:] = rebuild_history([*self.rollout.source.iter_forward_from(0), marker])
        self.rollout.record([marker])
        try:
            await self.rollout.flush()
        except (OSError, trio.TooSlowError) as exc:
            self._deliver(sub_id, WarningEvent(
                message=f"Rolled the thread back, but failed to save the rollback marker. Spindle will keep retrying. Error: {exc}"))
        self.rollout.touch()
        self._deliver(sub_id, marker)
