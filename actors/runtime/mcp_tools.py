"""MCP tools as the model sees them: one flat function per tool (`mcp__<server>__<tool>`).

A call produces an `McpToolCall` turn item (started, then completed or failed) and the
`function_call_output` Codex gives the model: the JSON of `structuredContent` when the server
sent one, else the JSON of `content`; an error is the text content of an `isError` result.
Outputs and item results over `MCP_MAX_OUTPUT_BYTES` are clipped, head and tail.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import msgspec

from spindle.protocol.items import McpToolCallItem
from spindle.protocol.mcp import tool_name

from .mcp_manager import McpCallError, McpManager, McpServer
from .tools import Tool, ToolContext, ToolRegistry, clip

if TYPE_CHECKING:
    from mcp import types

MCP_MAX_OUTPUT_BYTES = 64 * 1024
"""The most of one tool result the model (and the item) gets; the rest is elided."""


class McpTool:
    """One tool of one server, bound to the server instance the turn saw."""

    def __init__(self, name: str, server: McpServer, tool: types.Tool) -> None:
        self.name = name
        self.server = server
        self.tool = tool

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "type": "function", "name": self.name, "strict": False, "parameters": parameters(self.tool.inputSchema),
        }
        if self.tool.description:
            spec["description"] = self.tool.description
        return spec

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        server, tool = self.server.name, self.tool.name
        item = McpToolCallItem(id=ctx.call_id, server=server, tool=tool, status="inProgress")
        try:
            args = json.loads(arguments) if arguments.strip() else None
        except ValueError as exc:
            return self._fail(ctx, item, f"err: {exc}", started=False)
        if args is not None and not isinstance(args, dict):
            return self._fail(ctx, item, "err: the arguments must be a JSON object", started=False)
        item = msgspec.structs.replace(item, arguments=args)
        ctx.item_started(item)
        began = time.monotonic()
        try:
            result = await self.server.call(tool, args, self.server.config.tool_timeout_sec)
        except McpCallError as exc:
            return self._fail(ctx, item, f"tool call error: {exc}", began=began)
        wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        content = wire.get("content", [])
        structured = wire.get("structuredContent")
        output = json.dumps(structured if structured is not None else content, ensure_ascii=False)
        clipped = clip(output.encode(), MCP_MAX_OUTPUT_BYTES)
        kept: dict[str, Any] = {"content": content, "structuredContent": structured}
        if len(clipped) < len(output):  # too big for the item too: it keeps the clipped text
            kept = {"content": [{"type": "text", "text": clipped}], "structuredContent": None}
        ctx.item_completed(msgspec.structs.replace(
            item, status="failed" if result.isError else "completed", result=kept, duration_ms=_ms(began)))
        return clipped

    @staticmethod
    def _fail(ctx: ToolContext, item: McpToolCallItem, message: str, *, started: bool = True,
              began: float | None = None) -> str:
        if not started:
            ctx.item_started(item)
        duration = _ms(began) if began is not None else 0
        ctx.item_completed(msgspec.structs.replace(item, status="failed", error=message, duration_ms=duration))
        return json.dumps([{"type": "text", "text": message}], ensure_ascii=False)


def parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """A tool's input schema as the Responses API accepts it: an object with `properties` (a
    server that leaves them out would otherwise fail every request the tool rides on)."""
    properties = schema.get("properties")
    return {**schema, "type": "object", "properties": properties if isinstance(properties, dict) else {}}


def _ms(began: float) -> int:
    return int((time.monotonic() - began) * 1000)


def turn_tools(builtin: ToolRegistry, mcp: McpManager | None) -> ToolRegistry:
    """The tools of one turn: the runtime's, then the thread's MCP tools as they are now."""
    bound = mcp.tools() if mcp is not None else []
    if not bound:
        return builtin
    taken = set(builtin.names())
    extra: list[Tool] = []
    for server, tool in bound:
        name = tool_name(server.name, tool.name, taken)
        taken.add(name)
        extra.append(McpTool(name, server, tool))
    return builtin.extended(extra)
