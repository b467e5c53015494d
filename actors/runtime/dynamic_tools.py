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
from .tools import ToolArgumentError, ToolContext

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What the Responses API accepts as a function name."""
MAX_SCHEMA_BYTES = 64 * 1024


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
        result = await ctx.call_client(DynamicToolCallRequestEvent(
            call_id=ctx.call_id, turn_id=ctx.turn_id, tool=self.name, namespace=self.dynamic.namespace, arguments=args))
        ctx.item_completed(msgspec.structs.replace(
            item, status="completed" if result.success else "failed", content_items=result.content_items,
            success=result.success, duration_ms=int((time.monotonic() - began) * 1000)))
        return output_text(result)


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
    `MAX_SCHEMA_BYTES`."""
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
