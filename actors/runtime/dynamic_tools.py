"""Dynamic tools: tools a client registers on its thread (`thread/start`'s `dynamicTools`).

The model sees each as a function tool (its name, description and input schema), unless it is
`defer_loading` (registered and callable, not offered). A call becomes a `DynamicToolCall` item and
a `dynamic_tool_call_request` event, which the app-server turns into an `item/tool/call` request to
the client that registered the tools; the client's `contentItems` become the tool's output (their
text; an image as its URL), and `success: false` fails the item. The specs are checked once, at
registration (`checked_specs`), kept in the rollout's `session_meta`, and restored on resume.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from spindle.protocol.events import DynamicToolCallRequestEvent
from spindle.protocol.items import DynamicToolCallItem, DynamicToolSpec

from .approvals import ToolResult
from .errors import ConfigError
from .tools import ToolArgumentError, ToolContext, clip

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What the Responses API accepts as a function name."""
MAX_SCHEMA_BYTES = 64 * 1024
MAX_TOOLS = 128
MAX_TOTAL_BYTES = 256 * 1024
"""All of a thread's tool specs together (they are written in its rollout's first line)."""
MAX_OUTPUT_BYTES = 64 * 1024
"""The most of one text item of a client's answer the model (and the rollout) gets."""


class DynamicTool:
    def __init__(self, spec: DynamicToolSpec) -> None:
        self.name = spec.name
        self.dynamic = spec

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": self.dynamic.description, "strict": False,
                "parameters": self.dynamic.input_schema}

    def spec_for(self, model: str) -> dict[str, Any] | None:
        return None if self.dynamic.defer_loading else self.spec()

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise ToolArgumentError(f"the arguments are not JSON: {exc}") from None
        item = DynamicToolCallItem(id=ctx.call_id, tool=self.name, namespace=self.dynamic.namespace, arguments=args,
                                   status="inProgress")
        ctx.item_started(item)
        began = time.monotonic()
        ended = msgspec.structs.replace(item, status="failed")
        try:
            result = await ctx.call_client(DynamicToolCallRequestEvent(
                call_id=ctx.call_id, turn_id=ctx.turn_id, tool=self.name, namespace=self.dynamic.namespace,
                arguments=args))
            kept = kept_items(result.content_items)
            ended = msgspec.structs.replace(item, status="completed" if result.success else "failed",
                                            content_items=kept, success=result.success)
            return output_text(ToolResult(content_items=kept, success=result.success))
        finally:  # an interrupt while the client runs it, too: the item always ends
            ctx.item_completed(msgspec.structs.replace(ended, duration_ms=int((time.monotonic() - began) * 1000)))


def kept_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A client's content items as the thread keeps them: text clipped to `MAX_OUTPUT_BYTES`, an
    image or audio given inline (a data URL) replaced by a placeholder, anything else dropped."""
    kept: list[dict[str, Any]] = []
    for item in items:
        match item:
            case {"type": "inputText", "text": str(text)}:
                kept.append({"type": "inputText", "text": clip(text.encode(), MAX_OUTPUT_BYTES)})
            case {"type": "inputImage" | "inputAudio" as kind, **rest}:
                field = "imageUrl" if kind == "inputImage" else "audioUrl"
                url = rest.get(field)
                if isinstance(url, str):
                    kept.append({"type": kind, field: url if not url.startswith("data:") and len(url) <= 2048
                                 else "(inline data, not kept)"})
    return kept


def output_text(result: ToolResult) -> str:
    """What the model reads of a client's result: its text items, an image or audio as its URL."""
    parts = []
    for item in result.content_items:
        match item:
            case {"type": "inputText", "text": str(text)}:
                parts.append(text)
            case {"type": "inputImage", "imageUrl": str(url)}:
                parts.append(f"[image: {url}]")
            case {"type": "inputAudio", "audioUrl": str(url)}:
                parts.append(f"[audio: {url}]")
    text = "\n".join(parts)
    return text if result.success else f"the tool failed: {text or 'no details'}"


def checked_specs(specs: Sequence[DynamicToolSpec], taken: Iterable[str]) -> list[DynamicToolSpec]:
    """`specs`, or ConfigError naming the first bad one: a name the Responses API refuses, a name
    used twice or by a built-in tool, an input schema that is not a JSON object schema or is over
    `MAX_SCHEMA_BYTES`; or all of them over `MAX_TOOLS` or `MAX_TOTAL_BYTES` (they are kept in
    the rollout's first line)."""
    if len(specs) > MAX_TOOLS:
        raise ConfigError(f"dynamicTools: {len(specs)} tools; at most {MAX_TOOLS}")
    total = len(msgspec.json.encode(list(specs)))
    if total > MAX_TOTAL_BYTES:
        raise ConfigError(f"dynamicTools: {total} bytes of tool specs; at most {MAX_TOTAL_BYTES}")
    seen = set(taken)
    for spec in specs:
        where = f"dynamicTools: tool {spec.name!r}"
        if not NAME.match(spec.name):
            raise ConfigError(f"{where}: a name is 1 to 64 letters, digits, '_' or '-'")
        if spec.name in seen or spec.name.startswith("mcp__"):
            raise ConfigError(f"{where}: the name is taken (by another tool, or reserved for MCP tools)")
        seen.add(spec.name)
        schema = spec.input_schema
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise ConfigError(f"{where}: inputSchema must be a JSON Schema object with type \"object\"")
        if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
            raise ConfigError(f"{where}: inputSchema is over {MAX_SCHEMA_BYTES} bytes")
    return list(specs)
