"""A thread's model-visible history and its rollout, kept in step.

The thread actor changes its history only through a `ThreadJournal`, which records every change
in the rollout, and records events as `spindle.persistence.policy` says. Callers get the history
as a read-only `HistoryView`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

import structlog
import trio

from spindle.persistence.history import drop_last_user_turns
from spindle.persistence.policy import persisted_form, should_persist_event
from spindle.persistence.rollout import ThreadRollout
from spindle.protocol.events import (
    EventMsg,
    SessionConfiguredEvent,
    ThreadRolledBackEvent,
    WarningEvent,
)
from spindle.protocol.items import (
    InputText,
    Message,
    ResponseItem,
    close_dangling_calls,
    turn_aborted_marker,
)
from spindle.protocol.rollout import (
    CollaborationModeRecord,
    CompactedItem,
    ModeSettingsRecord,
    SandboxPolicy,
    TurnContextItem,
)
from spindle.protocol.settings import Granular, ThreadSettings

from .collaboration import last_mode_instructions, mode_message

log = structlog.get_logger(__name__)


class HistoryView(Sequence[ResponseItem]):
    """A read-only, live view of a thread's history."""

    __slots__ = ("_items",)

    def __init__(self, items: list[ResponseItem]) -> None:
        self._items = items

    @overload
    def __getitem__(self, index: int) -> ResponseItem: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ResponseItem]: ...
    def __getitem__(self, index: int | slice) -> ResponseItem | Sequence[ResponseItem]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence (a list, another view) of the same items."""
        if isinstance(other, HistoryView):
            return self._items == other._items
        return isinstance(other, Sequence) and not isinstance(other, str) and self._items == list(other)

    __hash__ = None  # type: ignore[assignment]  # it changes as the thread goes on

    def __repr__(self) -> str:
        return f"<HistoryView of {len(self._items)} items>"


def environment_context(settings: ThreadSettings) -> Message:
    """The initial context the model gets at a thread's first turn."""
    text = (
        "<environment_context>\n"
        f"  <cwd>{settings.cwd}</cwd>\n"
        f"  <approval_policy>{'granular' if isinstance(settings.approval_policy, Granular) else settings.approval_policy}</approval_policy>\n"
        f"  <sandbox_mode>{settings.sandbox_mode}</sandbox_mode>\n"
        "  <shell>bash</shell>\n"
        "</environment_context>"
    )
    return Message(role="user", content=[InputText(text=text)])


def is_environment_context(item: ResponseItem) -> bool:
    return (isinstance(item, Message) and item.role == "user" and bool(item.content)
            and isinstance(item.content[0], InputText) and item.content[0].text.startswith("<environment_context>"))


def turn_context_item(turn_id: str, settings: ThreadSettings) -> TurnContextItem:
    return TurnContextItem(
        turn_id=turn_id,
        cwd=settings.cwd,
        approval_policy=settings.approval_policy,
        sandbox_policy=SandboxPolicy(type=settings.sandbox_mode),
        model=settings.model,
        effort=settings.effort,
        summary=settings.summary,
        permissions=settings.permissions,
        runtime_workspace_roots=list(settings.runtime_workspace_roots) if settings.runtime_workspace_roots is not None else None,
        collaboration_mode=CollaborationModeRecord(mode=settings.collaboration_mode.mode, settings=ModeSettingsRecord(
            model=settings.model, reasoning_effort=settings.effort,
            developer_instructions=settings.collaboration_mode.developer_instructions)),
    )


class ThreadJournal:
    """History plus rollout. `history` is None for a new thread, or rebuilt from its rollout."""

    def __init__(self, rollout: ThreadRollout, history: list[ResponseItem] | None = None) -> None:
        self.rollout = rollout
        self._history: list[ResponseItem] = history if history is not None else []
        self._context_seeded = any(is_environment_context(item) for item in self._history)
        self._mode_told: str | None = None
        """The mode instructions the history gave the model last (looked up once, then kept)."""
        self._mode_known = False
        self.view = HistoryView(self._history)

    @property
    def history(self) -> list[ResponseItem]:
        """The history as the model will see it (the turn loop sends it as the request input)."""
        return self._history

    def session_configured(self, thread_id: str, settings: ThreadSettings) -> SessionConfiguredEvent:
        """The thread's first event: its settings and where its rollout is (None if ephemeral)."""
        return SessionConfiguredEvent(
            session_id=thread_id, model=settings.model, model_provider_id=settings.provider_id, cwd=settings.cwd,
            approval_policy=settings.approval_policy, sandbox_policy=settings.sandbox_mode,
            rollout_path=None if self.rollout.ephemeral else str(self.rollout.path),
            forked_from_id=self.rollout.meta.forked_from_id,
        )

    def record_event(self, msg: EventMsg) -> None:
        """Record `msg` in the rollout if the persistence policy keeps it."""
        if should_persist_event(msg):
            self.rollout.record([persisted_form(msg)])

    async def record_durably(self, msg: EventMsg) -> None:
        """Record `msg` and wait until the rollout is on disk; a write that fails is logged (the
        thread goes on, as it does when any other write fails)."""
        self.record_event(msg)
        try:
            await self.rollout.flush()
        except (OSError, trio.TooSlowError) as exc:
            log.warning("failed to write a client request to the rollout", error=str(exc))

    def append(self, items: Sequence[ResponseItem]) -> None:
        """Add items to the history and to the rollout (written at the next `drain`)."""
        self._history.extend(items)
        self.rollout.record(items)

    async def commit(self, items: Sequence[ResponseItem]) -> None:
        """`append`, then have the writer write the rollout's outbox (`settle`: a tool runs only
        once the call that asks for it is written, and only while this node owns the thread)."""
        self.append(items)
        await self.rollout.settle()

    def begin_turn(self, turn_id: str, settings: ThreadSettings, *, seed: bool = True) -> None:
        """A turn starts: its context (`seed_context`, unless `seed` is False), then its
        `turn_context`."""
        if seed:
            self.seed_context(settings)
        self.rollout.record([turn_context_item(turn_id, settings)])

    def seed_context(self, settings: ThreadSettings) -> None:
        """The initial context when the history lacks it (the thread's first turn, or after a
        compaction that left it out), and the collaboration mode's instructions when the model
        has not been given them last."""
        if not self._context_seeded:  # built at the first turn, so its overrides are in it
            self.append([environment_context(settings)])
            self._context_seeded = True
        instructions = settings.collaboration_mode.developer_instructions
        if instructions:
            if not self._mode_known:
                self._mode_told, self._mode_known = last_mode_instructions(self._history), True
            if instructions != self._mode_told:
                self.append([mode_message(instructions)])
                self._mode_told = instructions

    @staticmethod
    def initial_context(settings: ThreadSettings) -> list[ResponseItem]:
        """What `seed_context` gives a history that has nothing yet."""
        instructions = settings.collaboration_mode.developer_instructions
        return [environment_context(settings), *([mode_message(instructions)] if instructions else [])]

    def compact(self, replacement: list[ResponseItem], summary: str) -> None:
        """Replace the history with `replacement` (a compaction, whose summary message is
        `summary`), and record the `compacted` line that carries it."""
        self._history[:] = replacement
        self._context_seeded = any(is_environment_context(item) for item in replacement)
        self._mode_known = False
        self.rollout.record([CompactedItem(message=summary, replacement_history=list(replacement))])

    def close_aborted_turn(self) -> None:
        """An aborted turn leaves no call unanswered, and the model is told it was interrupted."""
        self.append([*close_dangling_calls(self._history), turn_aborted_marker()])

    async def roll_back_turns(self, num_turns: int, deliver: Callable[[EventMsg], None]) -> str | None:
        """`thread_rollback`: drop the last `num_turns` user turns from the history and record the
        marker, then `deliver` it to subscribers (after a warning when it could not be saved yet);
        why it cannot be done, if it cannot."""
        if num_turns == 0:
            return "num_turns must be >= 1"
        if not self.rollout.persisted:
            return "thread rollback requires persisted thread history"
        try:
            await self.rollout.flush()
        except (OSError, trio.TooSlowError) as exc:
            return f"failed to flush thread persistence for rollback replay: {exc}"
        marker = ThreadRolledBackEvent(num_turns=num_turns)
        self.roll_back(marker)
        try:
            await self.rollout.flush()
        except (OSError, trio.TooSlowError) as exc:
            deliver(WarningEvent(message="Rolled the thread back, but failed to save the rollback marker. "
                                      f"Spindle will keep retrying. Error: {exc}"))
        self.rollout.touch()
        deliver(marker)
        return None

    def roll_back(self, marker: ThreadRolledBackEvent) -> None:
        """Drop the marker's last turns from the history (what replaying the rollout with the
        marker at its end gives: the history is that replay so far), and record the marker."""
        self._history[:] = drop_last_user_turns(list(self._history), marker.num_turns)
        self._context_seeded = any(is_environment_context(item) for item in self._history)  # as a resume sees it
        self._mode_known = False  # the instructions given may have been rolled back
        self.rollout.record([marker])
