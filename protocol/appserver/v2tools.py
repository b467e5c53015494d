"""`thread/start.dynamicTools`: the tools a client registers on its thread."""

from __future__ import annotations

from typing import Any

import msgspec


class FunctionToolSpec(msgspec.Struct, tag_field="type", tag="function", kw_only=True, frozen=True, rename="camel"):
    name: str
    description: str
    input_schema: Any
    defer_loading: bool = False


class NamespaceToolSpec(msgspec.Struct, tag_field="type", tag="namespace", kw_only=True, frozen=True, rename="camel"):
    name: str
    description: str
    tools: list[FunctionToolSpec]


DynamicToolSpecV2 = FunctionToolSpec | NamespaceToolSpec
"""`thread/start.dynamicTools[]`: a function tool, or a namespace of them."""
