"""The thread actor: one Trio task per conversation, taking `Submission`s strictly in order.

Twin of codex-rs `submission_loop`. Ops arrive on a bounded memory channel; events go to every
subscriber through a lossy `Broadcaster`. A turn runs in its own cancel scope inside the actor's
nursery, so an interrupt (or shutdown) cancels it, and the turn always ends with `turn_aborted`.
The actor keeps dispatch and the turn lifecycle; its history and rollout are a `ThreadJournal`,
its callers' outcomes an `OutcomeBook`, its token count a `UsageMeter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
import trio
from trio_typing import TaskStatus

from spindle.persistence.paths import ThreadStoreError
from spindle.persistence.rollout import ThreadRollout
from spindle.protocol.config import Config, McpServerConfig
from spindle.protocol.events import (
    ErrorEvent,
    Event,
    EventMsg,
    ItemCompletedEvent,
    ItemStartedEvent,
    SessionConfiguredEvent,
    ShutdownCompleteEvent,
    TaskCompleteEvent,
    TaskStartedEvent,
    TokenUsage,
    TokenUsageInfo,
    TurnAbortedEvent,
    user_message_event,
)
from spindle.protocol.ids import new_id
from spindle.protocol.items import ResponseItem, UserInput, UserMessageItem, user_message
from spindle.protocol.ops import (
    CompactOp,
    DynamicToolResponseOp,
    ExecApprovalOp,
    InterruptOp,
    Op,
    OverrideTurnContextOp,
    PatchApprovalOp,
    RefreshMcpServersOp,
    ReloadUserConfigOp,
    RequestPermissionsResponseOp,
    ReviewOp,
    RunUserShellCommandOp,
    SetThreadMemoryModeOp,
    ShutdownOp,
    Submission,
    ThreadRollbackOp,
    UserInputAnswerOp,
    UserInputOp,
    UserTurnOp,
)
from spindle.protocol.review import ReviewRequest
from spindle.protocol.settings import SettingsUpdate, ThreadSettings

from .approvals import Answer, ApprovalError, Approvals, answer_of
from .compact import COMPACT, has_turns, run_compaction
from .dynamic_tools import DynamicTool
from .errors import ConfigError
from .fanout import Broadcaster
from .journal import ThreadJournal, turn_context_item
from .mcp_manager import McpManager
from .mcp_tools import turn_tools
from .memory_mode import MemoryModeError, recorded_memory_mode, store_memory_mode
from .model_client import ModelClient
from .outcomes import OutcomeBook
from .permission_profiles import PermissionProfiles, load_profiles
from .request_permissions_tool import offered
from .resources import RuntimeResources
from .review import ReviewTask, review_problem
from .sandbox import remove_thread_tmp
from .settings import apply_update
from .thread_config import INITIAL_SUB_ID, ThreadConfigMixin
from .tools import Tool
from .turn import REGULAR, CompactPhase, SamplingFailed, Task, Turn
from .usage import UsageMeter
from .user_shell import run_user_shell_command

log = structlog.get_logger(__name__)

SUBMISSION_CAPACITY = 64
"""Submissions queued per thread before `submit` waits."""
PERSIST_DEADLINE_S = 10.0
"""How long an aborted turn's cleanup may spend handing its last items to the writer."""

CLEANUP_DEADLINE_S = 5.0
"""How long an ending thread may spend deleting its sandbox's private /tmp."""



class ThreadActor(ThreadConfigMixin):
    """The task behind one thread. Construct through `ThreadManager.start_thread`."""

    def __init__(
        self,
        *,
        thread_id: str,
        settings: ThreadSettings,
        resources: RuntimeResources,
        receive: trio.MemoryReceiveChannel[Submission],
        events: Broadcaster[Event],
        rollout: ThreadRollout,
        history: list[ResponseItem] | None = None,
        session_config: Mapping[str, Any] | None = None,
        config: Config | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.session_config: dict[str, Any] = dict(session_config or {})
        """The thread's own config layer (`thread/start`'s `config` map: dotted keys), kept for its life."""
        self.config: Config = config if config is not None else resources.config
        """The thread's effective config (disk layers for its cwd, then its session layer);
        rebuilt by `reload_user_config`."""
        self.profiles: PermissionProfiles = load_profiles(self.config)
        """The permission profiles of the thread's config (a turn realises its sandbox from them)."""
        self.settings = settings
        self.resources = resources
        self.tools = resources.tools
        self.journal = ThreadJournal(rollout, history)
        self.outcomes = OutcomeBook()
        self.closed = trio.Event()
        rollout.on_error = lambda message: self._deliver(INITIAL_SUB_ID, ErrorEvent(message=message, codex_error_info="other"))
        self._receive = receive
        self._events = events
        self.usage = UsageMeter()
        self._active: Turn | None = None
        self._nursery: trio.Nursery | None = None
        self._writers: trio.Nursery | None = None
        self.mcp = McpManager(self._mcp_status)
        self.approvals = Approvals(self.emit, self.emit_durably)
        if rollout.persisted:  # resumed: what the user approved for the session still holds
            self.approvals.remember(rollout.source.facts.approvals)
        registered = rollout.meta.dynamic_tools
        self.dynamic_tools: list[Tool] = [DynamicTool(spec) for spec in registered] if isinstance(registered, list) else []
        """The client's own tools (`dynamicTools`), as its rollout records them."""
        self.memory_mode = recorded_memory_mode(rollout.source.facts.memory_mode)  # as the resume scan found it
        """Whether the thread may feed memory generation (kept, not used: Spindle makes no memories)."""
        self.mcp_configured = trio.Event()
        """Set once the thread's first MCP server set is applied (turns wait for it)."""
        self._mcp_pending: dict[str, McpServerConfig] | None = None
        self.fault: str | None = None
        """Why the actor stopped on an error of its own (the thread's `systemError`), if it did."""

    @property
    def rollout(self) -> ThreadRollout:
        return self.journal.rollout

    @property
    def active_turn(self) -> Turn | None:
        return self._active

    @property
    def active_turn_id(self) -> str | None:
        return self._active.turn_id if self._active is not None else None

    # --- TurnHost -------------------------------------------------------
    @property
    def history(self) -> list[ResponseItem]:
        return self.journal.history

    def client(self, provider_id: str) -> ModelClient:
        return self.resources.client(provider_id, self.config.provider(provider_id))

    def emit(self, sub_id: str, msg: EventMsg) -> None:
        """Record `msg` when the persistence policy keeps it, and deliver it to subscribers."""
        self.journal.record_event(msg)
        self._deliver(sub_id, msg)

    async def emit_durably(self, sub_id: str, msg: EventMsg) -> None:
        """`emit`, delivering `msg` once the rollout holds it on disk (or could not)."""
        await self.journal.record_durably(msg)
        self._deliver(sub_id, msg)

    def _deliver(self, sub_id: str, msg: EventMsg) -> None:
        if isinstance(msg, ErrorEvent):
            self.outcomes.set_error(sub_id, msg)
        self._events.publish(Event(id=sub_id, msg=msg))

    async def commit_input(self, turn: Turn, sub_id: str, items: list[UserInput]) -> None:
        self.journal.append([user_message(items)])
        item = UserMessageItem(id=new_id(), content=items)
        self.emit(sub_id, ItemStartedEvent(thread_id=self.thread_id, turn_id=turn.turn_id, item=item))
        self.emit(sub_id, ItemCompletedEvent(thread_id=self.thread_id, turn_id=turn.turn_id, item=item))
        self.journal.record_event(user_message_event(items))  # for Codex's readers; subscribers have the item
        await self.rollout.settle()  # the input is stored before the model hears it

    async def commit(self, items: list[ResponseItem]) -> None:
        await self.journal.commit(items)

    def record(self, items: list[ResponseItem]) -> None:
        self.journal.append(items)

    def add_usage(self, usage: TokenUsage, window: int | None, *, in_context: bool = True) -> TokenUsageInfo:
        return self.usage.add(usage, window, in_context=in_context)

    async def compact(self, turn: Turn, phase: CompactPhase) -> None:
        await run_compaction(turn, self, phase)

    # --- lifecycle ------------------------------------------------------
    def session_configured(self) -> SessionConfiguredEvent:
        return self.journal.session_configured(self.thread_id, self.settings)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve submissions until shutdown. A fault of the actor's own ends this thread only: it
        is logged, reported as an `error` event, callers waiting on it are answered, and the
        rollout is closed; nothing propagates to the runtime. Cancellation propagates."""
        with structlog.contextvars.bound_contextvars(thread_id=self.thread_id):
            try:
                async with trio.open_nursery() as writers:  # the rollout writer outlives the turns
                    await self._supervised(writers, task_status)
            finally:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + CLEANUP_DEADLINE_S):
                    await trio.to_thread.run_sync(remove_thread_tmp, self.thread_id)
                self._events.close()
                self.outcomes.settle_all(ErrorEvent(message=f"thread {self.thread_id} has shut down"))
                self.closed.set()

    async def _supervised(self, writers: trio.Nursery, task_status: TaskStatus[None]) -> None:
        started = False
        try:
            if self.rollout.persisted:  # resumed or forked: append to the existing file
                await self.rollout.start(writers, create=False)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.mcp.bind(nursery)
                self.emit(INITIAL_SUB_ID, self.session_configured())
                self._start_mcp()
                await self._take_up_unfinished_turn()
                task_status.started()
                started = True
                await self._submission_loop(writers)
                nursery.cancel_scope.cancel()  # the MCP servers: their processes are killed
        except* Exception as group:
            if not started:
                raise
            self._fail(group)
        finally:
            await self._close_rollout(INITIAL_SUB_ID)

    def _fail(self, group: BaseExceptionGroup[Exception]) -> None:
        cause = group.exceptions[0]
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        self.fault = f"{type(cause).__name__}: {cause}"
        log.error("thread actor failed", error=self.fault, exc_info=group)
        self._deliver(INITIAL_SUB_ID, ErrorEvent(
            message=f"thread {self.thread_id} stopped after an internal error: {self.fault}",
            codex_error_info="internal_server_error"))

    async def _submission_loop(self, writers: trio.Nursery) -> None:
        self._writers = writers
        with self._receive:
            async for sub in self._receive:
                try:
                    if await self._dispatch(sub):
                        return
                except Exception as exc:
                    self.outcomes.set_error(sub.id, ErrorEvent(
                        message=f"thread {self.thread_id} failed on an internal error: {type(exc).__name__}: {exc}",
                        codex_error_info="internal_server_error"))
                    raise
                finally:
                    self.outcomes.settle(sub.id)
        log.debug("submission channel closed without shutdown")
        await self._abort_turn("interrupted")

    async def _close_rollout(self, sub_id: str) -> None:
        """Flush and close the rollout (shielded, within the writer's reply deadline); idempotent."""
        try:
            with trio.CancelScope(shield=True):
                await self.rollout.shutdown()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("failed to shut down thread persistence", error=str(exc))
            self._deliver(sub_id, ErrorEvent(
                message=f"Failed to shutdown thread persistence: {str(exc) or type(exc).__name__}", codex_error_info="other"))

    async def _dispatch(self, sub: Submission) -> bool:
        """Handle one submission; True when the actor should end."""
        match sub.op:
            case UserInputOp(items=items, expected_turn_id=None):
                await self._user_input(sub.id, items)
            case UserInputOp(items=items, expected_turn_id=expected):
                if expected != self.active_turn_id:
                    self.emit(sub.id, ErrorEvent(
                        message=f"expected active turn `{expected}` but found `{self.active_turn_id}`",
                        codex_error_info="bad_request"))
                    return False
                await self._user_input(sub.id, items)
            case UserTurnOp(items=items, settings=update):
                if self._apply_settings(sub.id, update):
                    await self._user_input(sub.id, items)
            case OverrideTurnContextOp(settings=update):
                self._apply_settings(sub.id, update)
            case InterruptOp(turn_id=expected):
                if expected is not None and expected != self.active_turn_id:
                    self.emit(sub.id, ErrorEvent(message=f"no active turn to interrupt (asked for `{expected}`, active: `{self.active_turn_id}`)", codex_error_info="bad_request"))
                    return False
                self.outcomes.set_turn(sub.id, self.active_turn_id)
                await self._abort_turn("interrupted")
            case ShutdownOp(if_idle=True) if self._active is not None:
                self.emit(sub.id, ErrorEvent(message=f"turn {self._active.turn_id} is running", codex_error_info="bad_request"))
            case ShutdownOp():
                await self._abort_turn("interrupted")
                await self._close_rollout(sub.id)
                self.emit(sub.id, ShutdownCompleteEvent())
                return True
            case ThreadRollbackOp(num_turns=num_turns):
                await self._rollback(sub.id, num_turns)
            case CompactOp():
                await self._compact(sub.id)
            case ReviewOp(review_request=request):
                await self._review(sub.id, request)
            case (ExecApprovalOp() | PatchApprovalOp() | DynamicToolResponseOp() | RequestPermissionsResponseOp()
                  | UserInputAnswerOp()):
                await self._answer_approval(sub.id, sub.op.id, answer_of(sub.op))
            case ReloadUserConfigOp(config=config, cwd=cwd):
                await self._reload_config(sub.id, config if cwd == self.settings.cwd else None)
            case RefreshMcpServersOp(mcp_servers=servers):
                self._refresh_mcp(servers)
            case RunUserShellCommandOp():
                assert self._nursery is not None
                await run_user_shell_command(self, self._nursery, sub.id, sub.op)
            case SetThreadMemoryModeOp(mode=mode):
                assert self._writers is not None
                try:
                    self.memory_mode = await store_memory_mode(self.rollout, self._writers, mode)
                except MemoryModeError as exc:
                    self.emit(sub.id, ErrorEvent(message=str(exc), codex_error_info=exc.info))
            case _:
                self._unsupported(sub.id, sub.op)
        return False

    async def _answer_approval(self, sub_id: str, call_id: str, decision: Answer) -> None:
        """Answer a pending client request; the approval decision `abort` also interrupts the
        turn that asked."""
        try:
            self.approvals.answer(call_id, decision)
        except ApprovalError as exc:  # told to the one who answered (a double click, a late client), no one else
            self.outcomes.set_error(sub_id, ErrorEvent(message=str(exc), codex_error_info="bad_request"))
            return
        if decision == "abort":
            self.outcomes.set_turn(sub_id, self.active_turn_id)
            await self._abort_turn("interrupted")

    def _unsupported(self, sub_id: str, op: Op) -> None:
        tag = type(op).__struct_config__.tag
        self.emit(sub_id, ErrorEvent(message=f"op {tag!r} is not supported yet", codex_error_info="unsupported_operation"))

    def _apply_settings(self, sub_id: str, update: SettingsUpdate) -> bool:
        try:
            self.settings = apply_update(self.config, self.settings, update)
        except ConfigError as exc:
            self.emit(sub_id, ErrorEvent(message=str(exc), codex_error_info="bad_request"))
            return False
        return True

    # --- turns ----------------------------------------------------------
    async def _user_input(self, sub_id: str, items: list[UserInput]) -> None:
        if not items:
            self.emit(sub_id, ErrorEvent(message="user input is empty", codex_error_info="bad_request"))
            return
        if self._active is not None and not self._active.task.steerable:
            self.emit(sub_id, ErrorEvent(message=f"turn {self._active.turn_id} runs a {self._active.task.kind} task: "
                                         "input cannot join it; wait for it or interrupt it", codex_error_info="bad_request"))
            return
        if self._active is not None:
            self._active.pending.append((sub_id, items))
            self.outcomes.set_turn(sub_id, self._active.turn_id)
            return
        await self.start_task(sub_id, REGULAR, items)

    async def _review(self, sub_id: str, request: ReviewRequest) -> None:
        """Start a review turn, when the thread is idle and the request can run in its cwd."""
        if self._active is not None:
            problem: str | None = f"turn {self._active.turn_id} is running; a review starts only on an idle thread"
        else:
            problem = await review_problem(request, self.settings.cwd)
        if problem is not None:
            self.emit(sub_id, ErrorEvent(message=problem, codex_error_info="bad_request"))
            return
        await self.start_task(sub_id, ReviewTask(request))

    async def start_task(self, sub_id: str, task: Task, items: list[UserInput] | None = None) -> Turn | None:
        """Start a turn running `task` (a regular turn, a compaction, a review, a user's shell
        command), with `items` as its first input; None, with an error event, if the rollout
        cannot be created. The caller checks that no turn is running."""
        assert self._nursery is not None and self._writers is not None and self._active is None
        try:
            await self.rollout.materialize(self._writers)
        except (OSError, ThreadStoreError) as exc:
            self.emit(sub_id, ErrorEvent(message=f"failed to initialize rollout recorder: {exc}", codex_error_info="other"))
            return None
        turn = Turn(turn_id=new_id(), sub_id=sub_id, settings=self.settings, profiles=self.profiles, task=task)
        self.journal.begin_turn(turn.turn_id, turn.settings, seed=task.kind != COMPACT.kind)
        if items:
            turn.pending.append((sub_id, items))
        self.outcomes.set_turn(sub_id, turn.turn_id)
        self._active = turn
        self._nursery.start_soon(self._run_turn, turn)
        return turn

    async def _compact(self, sub_id: str) -> None:
        """Compact in a turn of its own; a running turn is replaced by it, as in Codex."""
        if self._active is None and not has_turns(self.history):
            self.emit(sub_id, ErrorEvent(message=f"thread {self.thread_id} has no turns to compact yet",
                                         codex_error_info="bad_request"))
            return
        await self._abort_turn("replaced")
        await self.start_task(sub_id, COMPACT)

    async def _take_up_unfinished_turn(self) -> None:
        """Resumed after the process stopped mid-turn: a turn waiting on a client goes on and asks
        again, if the thread resumes with the settings it ran with (else a cwd or a policy would
        change under it); any other is closed as interrupted, leaving no call without an output."""
        try:
            facts = self.rollout.source.facts  # as the resume scan found them
            unfinished = facts.unfinished if self.rollout.persisted else None
            if unfinished is None:
                return
            context = facts.last_context
            if unfinished.pending and context == turn_context_item(unfinished.turn_id, self.settings):
                assert self._nursery is not None
                self._active = Turn(turn_id=unfinished.turn_id, sub_id=INITIAL_SUB_ID, settings=self.settings,
                                    profiles=self.profiles, resumed_calls=frozenset(r.call_id for r in unfinished.pending))
                self._nursery.start_soon(self._run_turn, self._active)
                return
            self.journal.close_aborted_turn()
            self.emit(INITIAL_SUB_ID, TurnAbortedEvent(turn_id=unfinished.turn_id, reason="interrupted"))
            await self.rollout.drain()
        except Exception:  # a fault here must not make the thread impossible to resume
            log.exception("could not take up the turn the rollout ends in")

    async def _run_turn(self, turn: Turn) -> None:
        finished = False
        last: str | None = None
        with structlog.contextvars.bound_contextvars(turn_id=turn.turn_id):
            started = TaskStartedEvent(turn_id=turn.turn_id, model_context_window=turn.settings.model_context_window)
            if turn.resumed_calls is None:
                self.emit(turn.sub_id, started)
            else:  # the rollout has it already: subscribers are told the turn goes on
                self._deliver(turn.sub_id, started)
            try:
                with turn.scope:
                    try:
                        await self.mcp_configured.wait()
                        await self.mcp.wait_started()  # bounded by each server's startup timeout
                        turn.tools = turn_tools(self.tools.extended([*offered(self.config.features), *self.dynamic_tools]), self.mcp)  # fixed for the turn
                        last = await turn.task.run(turn, self)
                    except SamplingFailed as err:
                        log.info("turn failed", error=err.message)
                        self.emit(turn.sub_id, ErrorEvent(message=err.message, codex_error_info=err.info, turn_id=turn.turn_id))
                    except Exception as exc:  # a bug or a tool's fault ends this turn, not the thread
                        log.exception("turn failed on an internal error")
                        self.emit(turn.sub_id, ErrorEvent(
                            message=f"turn failed on an internal error: {type(exc).__name__}: {exc}",
                            codex_error_info="internal_server_error", turn_id=turn.turn_id))
                    finished = True
            finally:
                if finished:
                    self.journal.append(turn.take_injected())  # joined too late for its last sample
                    self.emit(turn.sub_id, TaskCompleteEvent(turn_id=turn.turn_id, last_agent_message=last))
                else:
                    self.journal.close_aborted_turn()
                    self.journal.append(turn.take_injected())
                    self.emit(turn.sub_id, TurnAbortedEvent(turn_id=turn.turn_id, reason=turn.abort_reason))  # type: ignore[arg-type]
                self._active = None
                if self._mcp_pending is not None:
                    pending, self._mcp_pending = self._mcp_pending, None
                    self.mcp.apply(pending)
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
        await turn.auxiliaries.cancel()  # what joined the turn ends first, within it
        turn.scope.cancel()
        await turn.done.wait()

    async def _rollback(self, sub_id: str, num_turns: int) -> None:
        if self._active is not None:
            failed: str | None = "Cannot rollback while a turn is in progress."
        else:
            failed = await self.journal.roll_back_turns(num_turns, lambda warning: self._deliver(sub_id, warning))
        if failed is not None:
            self.emit(sub_id, ErrorEvent(message=failed, codex_error_info="thread_rollback_failed"))
