"""`model/list`: the models a client may choose from."""

from __future__ import annotations

import msgspec

from .v2 import Inbound, Wire


class ModelListParams(Inbound, kw_only=True, frozen=True):
    cursor: str | None = None
    limit: int | None = None
    include_hidden: bool | None = None


class ReasoningEffortOption(Wire, kw_only=True):
    reasoning_effort: str
    description: str


class ModelInfo(Wire, kw_only=True):
    id: str
    model: str
    display_name: str
    description: str
    hidden: bool
    is_default: bool
    default_reasoning_effort: str
    supported_reasoning_efforts: list[ReasoningEffortOption]
    input_modalities: list[str] = msgspec.field(default_factory=lambda: ["text", "image"])


class ModelListResult(Wire, kw_only=True):
    data: list[ModelInfo]
    next_cursor: str | None = None
