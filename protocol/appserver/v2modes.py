"""Collaboration modes on the app-server wire (experimental): `turn/start.collaborationMode` and
`collaborationMode/list`. Inside a mode the names are snake_case, as Codex 0.171 sends them."""

from __future__ import annotations

import msgspec

from ..settings import ModeKind
from .v2base import Inbound, Wire


class ModeSettingsV2(msgspec.Struct, kw_only=True, frozen=True):
    """A mode's settings: they take precedence over turn/start's `model` and `effort`.
    `developer_instructions` null: the mode's built-in instructions."""

    model: str
    reasoning_effort: str | None = None
    developer_instructions: str | None = None


class CollaborationModeV2(msgspec.Struct, kw_only=True, frozen=True):
    mode: ModeKind
    settings: ModeSettingsV2


class CollaborationModeListParams(Inbound, kw_only=True, frozen=True):
    pass


class CollaborationModeMask(msgspec.Struct, kw_only=True):
    """A mode preset as a client shows it (no instructions: null takes the built-in ones)."""

    name: str
    mode: ModeKind | None = None
    model: str | None = None
    reasoning_effort: str | None = None


class CollaborationModeListResult(Wire, kw_only=True):
    data: list[CollaborationModeMask]
