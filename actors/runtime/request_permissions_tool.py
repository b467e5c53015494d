"""`request_permissions`: the model asks for more access (paths to read or write, the network)
before the commands that need it, and the user grants some of it, for the turn or the session.

Offered, as Codex offers it, when the config enables `features.request_permissions_tool`. Under
`never`, or a granular policy without `request_permissions`, nothing is asked and nothing granted.
Otherwise the call is a `request_permissions` event (the app-server's
`item/permissions/requestApproval`), answered by the `request_permissions_response` op; the model
reads the answer as JSON (`{"permissions": ..., "scope": ...}`: what was granted, real paths).
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from spindle.protocol.events import PermissionsRequestEvent
from spindle.protocol.sandbox import PermissionGrant, RequestedPermissions
from spindle.protocol.settings import Granular

from .grants import resolved
from .tools import ToolArgumentError, ToolContext

FEATURE = "request_permissions_tool"

_PATHS = {"type": "array", "items": {"type": "string"}}


class _Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    permissions: RequestedPermissions
    reason: str | None = None


_args = msgspec.json.Decoder(_Args)
_encoder = msgspec.json.Encoder()


class RequestPermissionsTool:
    name = "request_permissions"

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function", "name": self.name, "strict": False,
            "description": (
                "Request additional `network` or `file_system` permissions before later shell-like commands "
                "need them. Request only the specific permissions required for the task. The answer lists "
                "what was granted and for how long (`turn` or `session`); anything not listed was denied."),
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the permissions are needed, shown to the user."},
                    "permissions": {
                        "type": "object",
                        "properties": {
                            "file_system": {"type": "object", "properties": {"read": _PATHS, "write": _PATHS}},
                            "network": {"type": "object", "properties": {"enabled": {"type": "boolean"}}},
                        },
                    },
                },
                "required": ["permissions"],
                "additionalProperties": False,
            },
        }

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        try:
            args = _args.decode(arguments)
        except msgspec.MsgspecError as exc:
            raise ToolArgumentError(str(exc)) from None
        if args.permissions.is_empty():
            raise ToolArgumentError("request_permissions requires at least one permission")
        policy = ctx.settings.approval_policy
        if policy == "never" or isinstance(policy, Granular) and not policy.granular.request_permissions:
            return answer_text(PermissionGrant())  # rejected without asking anyone
        asked = await trio.to_thread.run_sync(resolved, args.permissions, ctx.settings.cwd)
        request = PermissionsRequestEvent(call_id=ctx.call_id, turn_id=ctx.turn_id, cwd=ctx.settings.cwd,
                                          permissions=asked, reason=args.reason)
        return answer_text(await ctx.request_permissions(request))


def offered(features: dict[str, Any]) -> list[RequestPermissionsTool]:
    """The tool, if the config's `[features]` enable it."""
    return [RequestPermissionsTool()] if features.get(FEATURE) is True else []


def answer_text(grant: PermissionGrant) -> str:
    return _encoder.encode(grant).decode()
