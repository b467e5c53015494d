"""JSON-RPC over JSON lines, the way the Codex app-server speaks it: the sans-IO core.

`ServerProtocol.receive(line)` turns one input line into an `Inbound` (a decoded request, a
notification, or an error to answer or log); `response`, `error` and `notification` turn outgoing
messages into bytes ending in `\\n`. The method table says which methods exist and how each one's
params decode. Nothing here does I/O or knows about threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from . import v2

RequestId = int | str

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_OVERLOADED = -32001

OVERLOADED_MESSAGE = "Server overloaded; retry later."


class RpcError(Exception):
    """An error answer to one request: code, message and optional data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_request(message: str) -> RpcError:
    return RpcError(INVALID_REQUEST, message)


def overloaded() -> RpcError:
    return RpcError(SERVER_OVERLOADED, OVERLOADED_MESSAGE, {"codexErrorInfo": "server_overloaded"})


# --- the method table -------------------------------------------------------

SUPPORTED: dict[str, type[msgspec.Struct]] = {
    "initialize": v2.InitializeParams,
    "thread/start": v2.ThreadStartParams,
    "thread/resume": v2.ThreadResumeParams,
    "thread/fork": v2.ThreadForkParams,
    "thread/read": v2.ThreadReadParams,
    "thread/list": v2.ThreadListParams,
    "thread/loaded/list": v2.ThreadLoadedListParams,
    "thread/archive": v2.ThreadIdParams,
    "thread/unarchive": v2.ThreadIdParams,
    "thread/unsubscribe": v2.ThreadIdParams,
    "thread/name/set": v2.ThreadSetNameParams,
    "thread/rollback": v2.ThreadRollbackParams,
    "thread/revert": v2.ThreadRevertParams,
    "thread/compact/start": v2.ThreadIdParams,
    "turn/start": v2.TurnStartParams,
    "turn/steer": v2.TurnSteerParams,
    "turn/interrupt": v2.TurnInterruptParams,
    "model/list": v2.ModelListParams,
}
"""Methods Spindle serves, each with its params type."""

PARAMS_OPTIONAL = frozenset({"thread/start", "thread/list", "thread/loaded/list", "model/list"})
"""Methods whose `params` may be omitted (treated as `{}`)."""

KNOWN_UNSUPPORTED = frozenset({
    "thread/delete", "thread/goal/set", "thread/goal/get", "thread/goal/clear", "thread/metadata/update",
    "thread/attachment/add", "thread/attachment/list", "thread/attachmentOwner/list", "thread/attachment/remove",
    "thread/section/move", "thread/shellCommand", "thread/approveGuardianDeniedAction", "threadSection/list",
    "threadSection/create", "threadSection/update", "threadSection/delete", "thread/turns/list",
    "thread/items/list", "thread/inject_items", "skills/list", "skills/extraRoots/set", "hooks/list",
    "marketplace/add", "marketplace/remove", "marketplace/upgrade", "plugin/list", "plugin/installed",
    "plugin/reconcile", "plugin/read", "plugin/skill/read", "plugin/share/save", "plugin/share/updateTargets",
    "plugin/share/list", "plugin/share/checkout", "plugin/share/delete", "app/read", "app/list", "app/installed",
    "fs/readFile", "fs/writeFile", "fs/createDirectory", "fs/getMetadata", "fs/readDirectory", "fs/remove",
    "fs/copy", "fs/watch", "fs/unwatch", "skills/config/write", "plugin/install", "plugin/uninstall",
    "review/start", "account/gatewayOAuth/read", "account/gatewayOAuth/login", "account/gatewayOAuth/cancel",
    "modelProvider/capabilities/read", "experimentalFeature/list", "permissionProfile/list",
    "experimentalFeature/enablement/set", "mcpServer/oauth/login", "config/mcpServer/reload",
    "mcpServerStatus/list", "mcpServer/resource/read", "mcpServer/tool/call", "windowsSandbox/setupStart",
    "windowsSandbox/readiness", "account/login/start", "account/login/cancel", "account/logout",
    "account/rateLimits/read", "account/rateLimitResetCredit/consume", "account/usage/read",
    "account/workspaceMessages/read", "account/sendAddCreditsNudgeEmail", "feedback/upload", "command/exec",
    "command/exec/write", "command/exec/terminate", "command/exec/resize", "config/read",
    "externalAgentConfig/detect", "externalAgentConfig/import", "externalAgentConfig/import/recordHistory",
    "externalAgentConfig/import/readHistories", "config/value/write", "config/batchWrite",
    "configRequirements/read", "account/read", "fuzzyFileSearch",
})
"""The rest of the v2 schema's client methods: answered "not supported by Spindle", never ignored."""

_decoders = {method: msgspec.json.Decoder(kind) for method, kind in SUPPORTED.items()}


def decode_params(method: str, raw: msgspec.Raw | None) -> msgspec.Struct:
    """`raw` decoded with `method`'s own params type; RpcError(-32602) names the field at fault."""
    if raw is None:
        if method not in PARAMS_OPTIONAL:
            raise RpcError(INVALID_PARAMS, f"Invalid params for {method}: missing field `params`")
        raw = msgspec.Raw(b"{}")
    try:
        return _decoders[method].decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise RpcError(INVALID_PARAMS, f"Invalid params for {method}: {exc}") from None


def method_error(method: str) -> RpcError:
    """The answer to a method Spindle does not serve."""
    if method in KNOWN_UNSUPPORTED:
        return RpcError(METHOD_NOT_FOUND, f"method `{method}` is not supported by Spindle")
    return RpcError(
        METHOD_NOT_FOUND,
        f"unknown method `{method}`; Spindle serves: {', '.join(sorted(SUPPORTED))}",
    )


# --- inbound ----------------------------------------------------------------


_ABSENT = msgspec.Raw(b"")
_NULL = msgspec.Raw(b"null")


class _Envelope(msgspec.Struct, kw_only=True):
    id: Any = UNSET
    method: str | UnsetType = UNSET
    params: msgspec.Raw = _ABSENT  # left undecoded: the method's own decoder reads it
    result: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


_envelope = msgspec.json.Decoder(_Envelope)


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: msgspec.Raw | None


@dataclass(frozen=True, slots=True)
class Notification:
    method: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A response to a server request (Spindle sends none, so these are only logged)."""

    id: Any


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a usable message. With an `id`, it is answered; without, only logged."""

    error: RpcError
    id: RequestId | None = None


Inbound = Request | Notification | Reply | Invalid


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_line(line: bytes | bytearray) -> Inbound:
    """Classify one input line (without its newline)."""
    try:
        env = _envelope.decode(line)
    except msgspec.ValidationError as exc:
        return Invalid(RpcError(INVALID_REQUEST, f"not a JSON-RPC message object: {exc}"))
    except msgspec.DecodeError as exc:
        return Invalid(RpcError(PARSE_ERROR, f"malformed JSON: {exc}"))
    has_id = env.id is not UNSET
    if env.method is UNSET:
        if has_id and (len(env.result) or len(env.error)):
            return Reply(env.id)
        if has_id and _usable_id(env.id):
            return Invalid(invalid_request("Invalid request: missing field `method`"), env.id)
        return Invalid(invalid_request("message has neither a method nor a usable id"))
    params = None if env.params == _ABSENT or env.params == _NULL else env.params
    if not has_id:
        return Notification(env.method)
    if not _usable_id(env.id):
        return Invalid(invalid_request(f"request {env.method!r} has an unusable id {env.id!r}"))
    return Request(env.id, env.method, params)


# --- outbound ---------------------------------------------------------------


class _Response(msgspec.Struct):
    id: RequestId
    result: Any


class _ErrorBody(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class _ErrorResponse(msgspec.Struct):
    error: _ErrorBody
    id: RequestId


class _Notification(msgspec.Struct, rename="camel"):
    method: str
    params: Any
    emitted_at_ms: int


class Writer:
    """Encodes outgoing messages as compact JSON lines, reusing one buffer."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray(256)

    def _line(self, message: msgspec.Struct) -> bytes:
        self._encoder.encode_into(message, self._buffer)
        self._buffer.extend(b"\n")
        return bytes(self._buffer)

    def response(self, request_id: RequestId, result: Any) -> bytes:
        return self._line(_Response(request_id, result))

    def error(self, request_id: RequestId, error: RpcError) -> bytes:
        return self._line(_ErrorResponse(_ErrorBody(error.code, error.message, error.data), request_id))

    def notification(self, method: str, params: Any) -> bytes:
        return self._line(_Notification(method, params, now_ms()))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the handshake ----------------------------------------------------------


class Handshake:
    """Per-connection state: `initialize` exactly once, before anything else."""

    def __init__(self) -> None:
        self.initialized = False

    def check(self, method: str) -> None:
        """RpcError unless `method` may run now."""
        if method == "initialize":
            if self.initialized:
                raise invalid_request("Already initialized")
        elif not self.initialized:
            raise invalid_request("Not initialized")

    def done(self) -> None:
        self.initialized = True
