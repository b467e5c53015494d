"""What a workspace adds to Codex, on the app-server wire: `skills/list`, `hooks/list` and
`plugin/installed` (one entry per directory asked about, or one list of marketplaces)."""

from __future__ import annotations

from typing import Any

import msgspec

from .v2base import Inbound, Wire


class SkillsListParams(Inbound, kw_only=True, frozen=True):
    cwds: list[str] | None = None
    """Empty or null: the server's session cwd."""
    force_reload: bool | None = None


class SkillsListEntry(Wire, kw_only=True):
    cwd: str
    skills: list[Any] = msgspec.field(default_factory=list)
    errors: list[Any] = msgspec.field(default_factory=list)


class SkillsListResult(Wire, kw_only=True):
    data: list[SkillsListEntry]


class HooksListParams(Inbound, kw_only=True, frozen=True):
    cwds: list[str] | None = None
    """Empty or null: the server's session cwd."""
    thread_id: str | None = None
    """A loaded thread's hooks (its cwd), instead of `cwds`."""


class HooksListEntry(Wire, kw_only=True):
    cwd: str
    hooks: list[Any] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    errors: list[Any] = msgspec.field(default_factory=list)


class HooksListResult(Wire, kw_only=True):
    data: list[HooksListEntry]


class PluginInstalledParams(Inbound, kw_only=True, frozen=True):
    cwds: list[str] | None = None
    install_suggestion_plugin_names: list[str] | None = None


class PluginInstalledResult(Wire, kw_only=True):
    marketplaces: list[Any] = msgspec.field(default_factory=list)
    marketplace_load_errors: list[Any] = msgspec.field(default_factory=list)
