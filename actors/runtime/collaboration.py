"""Collaboration modes: Plan (the model plans with the user and may ask questions with
`request_user_input`) and Default (it carries the request out). A thread starts in Default mode
with no mode instructions; selecting a mode (turn/start's `collaborationMode`, a `SettingsUpdate`)
gives it that mode's instructions, the built-in ones unless the client names its own. The model
gets them as a `<collaboration_mode>` developer message, once each time they change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spindle.protocol.items import InputText, Message, ResponseItem
from spindle.protocol.settings import CollaborationMode, ModeKind

MODE_NAMES: dict[str, str] = {"plan": "Plan", "default": "Default"}
"""Each mode's display name (what the model and `collaborationMode/list` call it)."""

OPEN_TAG = "<collaboration_mode>"
CLOSE_TAG = "</collaboration_mode>"

PLAN_INSTRUCTIONS = """# Collaboration Mode: Plan

You are in Plan mode: work out a plan together with the user before anything is changed. Explore \
the workspace with commands that only read; do not edit files or run commands that change \
anything. When a decision needs the user and the workspace cannot settle it, ask with the \
`request_user_input` tool: one to three short questions, each with two or three options, the \
recommended one first. When the plan is complete, present it in full and stop: the user decides \
when it is carried out."""

DEFAULT_INSTRUCTIONS = """# Collaboration Mode: Default

You are in Default mode; the instructions of any other mode (Plan mode, say) no longer apply. \
Carry the user's request out, making reasonable assumptions where the workspace does not settle \
a question. The `request_user_input` tool is unavailable in Default mode: calling it returns an \
error. Ask the user in your answer only when you cannot go on without them."""

BUILTIN_INSTRUCTIONS: dict[str, str] = {"plan": PLAN_INSTRUCTIONS, "default": DEFAULT_INSTRUCTIONS}


@dataclass(frozen=True)
class ModePreset:
    """A mode as `collaborationMode/list` offers it: the reasoning effort it suggests, and no
    model of its own (the client keeps the thread's)."""

    name: str
    mode: ModeKind
    reasoning_effort: str | None


PRESETS = (ModePreset("Plan", "plan", "medium"), ModePreset("Default", "default", None))
"""The modes offered, as Codex 0.171 offers them."""


def with_instructions(mode: CollaborationMode) -> CollaborationMode:
    """`mode` with its built-in instructions when it names none (`developer_instructions` None)."""
    if mode.developer_instructions is not None:
        return mode
    return CollaborationMode(mode=mode.mode, developer_instructions=BUILTIN_INSTRUCTIONS[mode.mode])


def mode_message(instructions: str) -> Message:
    return Message(role="developer", content=[InputText(text=f"{OPEN_TAG}{instructions}{CLOSE_TAG}")])


def last_mode_instructions(history: Sequence[ResponseItem]) -> str | None:
    """The mode instructions the model was given last in `history`, if any."""
    for item in reversed(history):
        if isinstance(item, Message) and item.role == "developer":
            text = item.text()
            if text.startswith(OPEN_TAG) and text.endswith(CLOSE_TAG):
                return text[len(OPEN_TAG):-len(CLOSE_TAG)]
    return None
