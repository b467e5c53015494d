"""App-server v2 wire types of the config methods: `config/read`, `config/value/write`,
`config/batchWrite`, `configRequirements/read`, and the `configWarning` notification."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .v2 import Inbound, Wire

MergeStrategy = Literal["replace", "upsert"]


class ConfigReadParams(Inbound, kw_only=True, frozen=True):
    include_layers: bool = False
    cwd: str | None = None
    """Adds the project layers seen from this directory (a relative one is resolved against the
    server's cwd: the TUI sends `"."`)."""


class ConfigEdit(Inbound, kw_only=True, frozen=True):
    key_path: str
    value: Any
    merge_strategy: MergeStrategy


class ConfigValueWriteParams(ConfigEdit, kw_only=True, frozen=True):
    file_path: str | None = None
    expected_version: str | None = None


class ConfigBatchWriteParams(Inbound, kw_only=True, frozen=True):
    edits: list[ConfigEdit]
    file_path: str | None = None
    expected_version: str | None = None
    reload_user_config: bool = False


class ConfigRequirementsReadParams(Inbound, kw_only=True, frozen=True):
    """No params (the TUI sends none; the schema types them `null`)."""


class ConfigLayerMetadata(Wire, kw_only=True):
    name: dict[str, Any]
    """A `ConfigLayerSource`: `{"type": "user", "file", "profile"}`, `{"type": "project",
    "dotCodexFolder"}`, `{"type": "system", "file"}` or `{"type": "sessionFlags"}`."""
    version: str


class ConfigLayerOut(Wire, kw_only=True):
    name: dict[str, Any]
    version: str
    config: Any
    disabled_reason: str | None = None


class ConfigReadResult(Wire, kw_only=True):
    config: dict[str, Any]
    origins: dict[str, ConfigLayerMetadata]
    layers: list[ConfigLayerOut] | None = None


class OverriddenMetadata(Wire, kw_only=True):
    message: str
    overriding_layer: ConfigLayerMetadata
    effective_value: Any


class ConfigWriteResult(Wire, kw_only=True):
    status: Literal["ok", "okOverridden"]
    version: str
    file_path: str
    overridden_metadata: OverriddenMetadata | None = None


class ConfigRequirementsReadResult(Wire, kw_only=True):
    requirements: Any = None
    supports_independent_speed_modes: bool = True


class ConfigWarningNotice(Wire, kw_only=True):
    summary: str
    details: str | None = None
    path: str | None = None
    range: Any = msgspec.field(default=None)
