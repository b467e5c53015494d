"""A tiny stdio MCP server for the tests, written with the `mcp` SDK (FastMCP).

Tools: add, echo, big (a result of N MB), slow (sleeps), mismatched (structured content its
output schema does not allow), boom, crash. `TINY_HTTP_PORT=<port>` serves streamable HTTP on
127.0.0.1:<port>/mcp instead of stdio (answering in JSON bodies, not SSE, with
`TINY_JSON_RESPONSE=1`). `TINY_PAGE_SIZE=N` lists the tools N at a time. `TINY_GRANDCHILD_PID=<file>` makes it
start a `sleep` child first and write its pid there (for the process-group kill test).
"""

from __future__ import annotations

import os
import subprocess

import anyio
from mcp.server.fastmcp import FastMCP
from mcp.types import CallToolResult, ListToolsRequest, ListToolsResult, TextContent, Tool


class Tiny(FastMCP):
    async def list_tools(self) -> list[Tool]:
        """The tools, `mismatched` declaring an output schema with a catastrophically backtracking
        pattern (which a client-side check would run), `big` a 200 kB input schema with
        `TINY_HUGE_SCHEMA=1`."""
        tools = await super().list_tools()
        for tool in tools:
            if tool.name == "mismatched":
                tool.outputSchema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}}
            if tool.name == "big" and os.environ.get("TINY_HUGE_SCHEMA"):
                tool.inputSchema["description"] = "x" * 200_000
        return tools


app = Tiny("tiny", port=int(os.environ.get("TINY_HTTP_PORT", "0")), log_level="WARNING",
           json_response=bool(os.environ.get("TINY_JSON_RESPONSE")))


@app.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@app.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@app.tool()
def big(mb: float) -> str:
    """Return a text of `mb` megabytes."""
    return "x" * int(mb * 1024 * 1024)


@app.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await anyio.sleep(seconds)
    return "slept"


@app.tool()
def boom() -> str:
    """Raise: the server answers with isError."""
    raise RuntimeError("kaboom")


@app.tool()
def mismatched(code: str) -> CallToolResult:
    """Answer `code` as structured content, whatever the declared output schema says."""
    return CallToolResult(content=[TextContent(type="text", text=code)], structuredContent={"code": code})



@app.tool()
def crash() -> str:
    """Exit the server at once."""
    os._exit(1)


PAGE_SIZE = int(os.environ.get("TINY_PAGE_SIZE", "0"))
if PAGE_SIZE:  # tools/list in pages of this many tools
    @app._mcp_server.list_tools()
    async def paged(request: ListToolsRequest) -> ListToolsResult:
        tools = await app.list_tools()
        start = int(request.params.cursor or 0) if request.params else 0
        end = start + PAGE_SIZE
        return ListToolsResult(tools=tools[start:end], nextCursor=str(end) if end < len(tools) else None)


if __name__ == "__main__":
    pid_file = os.environ.get("TINY_GRANDCHILD_PID")
    if pid_file:
        child = subprocess.Popen(["sleep", "300"])
        with open(pid_file, "w") as f:
            f.write(str(child.pid))
    app.run(transport="streamable-http" if os.environ.get("TINY_HTTP_PORT") else "stdio")
