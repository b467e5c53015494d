"""JSON-RPC over JSON lines, the way the Codex app-server speaks it: the sans-IO core.

`parse_line(line)` turns one input line into an `Inbound`: a request (its params left undecoded,
the thread it targets read cheaply), a notification, a reply, or an error to answer. A line that
is not a usable request is answered with its id when the id can be recovered from the raw bytes,
else with `"id": null` as JSON-RPC 2.0 says; nesting deeper than `MAX_NESTING` is refused before
any decoder recurses into it. `Writer` turns outgoing messages into bytes ending in `\\n`. The
method table says which methods exist and how each one's params decode. Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
import time
from array import array
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import msgspec
from msgspec import UNSET

from ..ids import parse_thread_id
from . import (
    v2,
    v2account,
    v2config,
    v2mcp,
    v2models,
    v2modes,
    v2pages,
    v2perm,
    v2review,
    v2subscribe,
    v2workspace,
)
from .unsupported import KNOWN_UNSUPPORTED

RequestId = int | str
AnswerId = RequestId | msgspec.Raw | None
"""The id an answer carries: the request's, its raw JSON text when only that can be echoed (a
string with a lone surrogate), or None (`null`) when no id can be recovered."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_OVERLOADED = -32001
THREAD_TIMEOUT = -32000
"""A thread did not take up a request in time (it may still act on it later)."""

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


def thread_timeout(method: str, thread_id: str | None) -> RpcError:
    """The answer to a request whose thread did not take it up in time.

    Not "overloaded": the submission may still reach the thread, so a blind retry could act twice.
    """
    if thread_id is None:
        return RpcError(THREAD_TIMEOUT, f"`{method}` timed out waiting for a thread")
    return RpcError(
        THREAD_TIMEOUT,
        f"thread {thread_id} did not take up `{method}` in time; it may be stuck, and the request may still take effect",
        {"threadId": thread_id},
    )


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
    "thread/shellCommand": v2.ThreadShellCommandParams,
    "thread/memoryMode/set": v2.ThreadMemoryModeSetParams,
    "thread/turns/list": v2pages.ThreadTurnsListParams,
    "thread/items/list": v2pages.ThreadItemsListParams,
    "thread/items/read": v2pages.ThreadItemsReadParams,
    "turn/start": v2.TurnStartParams,
    "turn/steer": v2.TurnSteerParams,
    "turn/interrupt": v2.TurnInterruptParams,
    "model/list": v2models.ModelListParams,
    "permissionProfile/list": v2perm.PermissionProfileListParams,
    "config/read": v2config.ConfigReadParams,
    "config/value/write": v2config.ConfigValueWriteParams,
    "config/batchWrite": v2config.ConfigBatchWriteParams,
    "configRequirements/read": v2config.ConfigRequirementsReadParams,
    "mcpServerStatus/list": v2mcp.McpServerStatusListParams,
    "config/mcpServer/reload": v2mcp.NoParams,
    "collaborationMode/list": v2modes.CollaborationModeListParams,
    "review/start": v2review.ReviewStartParams,
    "account/read": v2account.GetAccountParams,
    "account/bedrock/checkGovCloudRequirements": v2account.BedrockCheckGovCloudParams,
    "skills/list": v2workspace.SkillsListParams,
    "hooks/list": v2workspace.HooksListParams,
    "plugin/installed": v2workspace.PluginInstalledParams,
    "thread/subscribe": v2subscribe.ThreadSubscribeParams,
}
"""Methods Spindle serves, each with its params type."""

PARAMS_OPTIONAL = frozenset({
    "thread/start", "thread/list", "thread/loaded/list", "model/list", "config/read", "configRequirements/read", "mcpServerStatus/list",
    "config/mcpServer/reload", "permissionProfile/list", "collaborationMode/list", "account/read",
    "account/bedrock/checkGovCloudRequirements", "skills/list", "hooks/list", "plugin/installed",
})
"""Methods whose `params` may be omitted (treated as `{}`)."""

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
    except msgspec.DecodeError as exc:  # bytes the envelope skipped over: bad UTF-8, a lone surrogate
        raise RpcError(PARSE_ERROR, f"Invalid JSON in params for {method}: {exc}") from None


def method_error(method: str) -> RpcError:
    """The answer to a method Spindle does not serve."""
    if method in KNOWN_UNSUPPORTED:
        return RpcError(METHOD_NOT_FOUND, f"method `{method}` is not supported by Spindle")
    return RpcError(
        METHOD_NOT_FOUND,
        f"unknown method `{method}`; Spindle serves: {', '.join(sorted(SUPPORTED))}",
    )


# --- inbound ----------------------------------------------------------------

MAX_NESTING = 128
"""Deepest nesting of arrays and objects a line may have (the Codex app-server's serde_json limit);
a deeper line is refused before any decoder recurses into it."""
ID_SCAN_BYTES = 1024 * 1024
"""How far into an undecodable line its id is looked for."""

_ABSENT = msgspec.Raw(b"")
_NULL = msgspec.Raw(b"null")


class _Envelope(msgspec.Struct, kw_only=True):
    id: Any = UNSET
    method: Any = UNSET  # checked after decoding, so a wrong type still leaves the id usable
    params: msgspec.Raw = _ABSENT  # left undecoded: the method's own decoder reads it
    result: msgspec.Raw = _ABSENT
    error: msgspec.Raw = _ABSENT


class _Targets(msgspec.Struct, rename="camel"):
    thread_id: Any = None
    idempotency_key: Any = None


_envelope = msgspec.json.Decoder(_Envelope)
_targets = msgspec.json.Decoder(_Targets)


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: msgspec.Raw | None
    thread_id: str | None = None
    """The thread the request targets (its params' `threadId`), if it names one."""
    idempotency_key: Any = None
    """Its params' `idempotencyKey` (a Spindle extension), unchecked; None if absent or null."""


@dataclass(frozen=True, slots=True)
class Notification:
    method: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A client's response to a server request: its `result`, or its `error` (raw JSON)."""

    id: Any
    result: msgspec.Raw | None = None
    error: msgspec.Raw | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a usable request: answered with `id`, or with `null` when `id` is None."""

    error: RpcError
    id: AnswerId = None


Inbound = Request | Notification | Reply | Invalid


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_line(line: bytes | bytearray) -> Inbound:
    """Classify one input line (without its newline)."""
    if too_deep(line):
        return _refuse(line, invalid_request(f"Invalid request: JSON nested deeper than {MAX_NESTING} levels"))
    try:
        env = _envelope.decode(line)
    except msgspec.ValidationError as exc:
        return _refuse(line, invalid_request(f"not a JSON-RPC message object: {exc}"))
    except msgspec.DecodeError as exc:
        return _refuse(line, RpcError(PARSE_ERROR, f"Parse error: {_decode_problem(line, exc)}"))
    has_id = env.id is not UNSET
    request_id = env.id if has_id and _usable_id(env.id) else None
    if env.method is UNSET:
        if has_id and (len(env.result) or len(env.error)):
            return Reply(env.id, env.result if len(env.result) else None, env.error if len(env.error) else None)
        if request_id is not None:
            return Invalid(invalid_request("Invalid request: missing field `method`"), request_id)
        return Invalid(invalid_request("message has neither a method nor a usable id"))
    if not isinstance(env.method, str):
        return Invalid(invalid_request(f"Invalid request: `method` must be a string, not {env.method!r:.40}"), request_id)
    if not has_id:
        return Notification(env.method)
    if request_id is None:
        return Invalid(invalid_request(f"request {env.method!r} has an unusable id {env.id!r:.40}"))
    params = None if env.params == _ABSENT or env.params == _NULL else env.params
    targets = _read_targets(params)
    return Request(request_id, env.method, params, _thread_target(targets), targets.idempotency_key)


def _read_targets(params: msgspec.Raw | None) -> _Targets:
    """`params`' `threadId` and `idempotencyKey`, read alone (the method's decoder checks the rest)."""
    if params is None:
        return _Targets()
    try:
        return _targets.decode(params)
    except msgspec.DecodeError:  # not an object: the method's decoder will say so
        return _Targets()


def _thread_target(targets: _Targets) -> str | None:
    """The `threadId` the params name, canonical when it is a UUID; None if they name none."""
    value = targets.thread_id
    if not isinstance(value, str):
        return None
    try:
        return parse_thread_id(value)
    except ValueError:
        return value


def _refuse(line: bytes | bytearray, error: RpcError) -> Invalid:
    return Invalid(error, recover_id(line))


# --- reading a line that does not decode ---------------------------------------

_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'"[]{}'))
_QUOTED = re.compile(rb'"[^"]*"')
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes
_TOKENS = re.compile(_STRING + rb"|[\[\]{}:]", re.DOTALL)
_ID_VALUE = re.compile(rb"\s*(" + _STRING + rb"|-?\d+)\s*[,}]", re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LOW_SURROGATE = frozenset(b"cdefCDEF")
_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")


def too_deep(line: bytes | bytearray) -> bool:
    """Whether arrays and objects nest more than `MAX_NESTING` levels deep in `line`.

    Found without decoding (so without recursion): brackets inside strings do not count. A line
    with too few brackets to get that deep costs two `count`s.
    """
    if line.count(b"{") + line.count(b"[") <= MAX_NESTING:
        return False
    # escaped backslashes go first: in `\\"` the backslash is escaped and the quote ends the string
    unescaped = line.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in line else line
    structure = unescaped.translate(None, _NOT_STRUCTURE)  # quotes and brackets, nothing else
    brackets = _QUOTED.sub(b"", structure)
    return max(accumulate(array("b", brackets.translate(_BRACKET_STEPS))), default=0) > MAX_NESTING


def recover_id(line: bytes | bytearray) -> AnswerId:
    """The id of a line that does not decode, read from its raw bytes, or None.

    Only a member `"id"` of the top-level object counts, and only when its value is an integer or
    a string. A string that is valid UTF-8 but not decodable by the strict decoder (it holds a
    lone surrogate escape) is returned as its raw JSON text, to be echoed byte for byte.
    """
    head = bytes(line[:ID_SCAN_BYTES])
    if not head.lstrip().startswith(b"{"):
        return None  # not an object: an array (a batch), a scalar, or garbage
    depth = 0
    previous = b""
    for match in _TOKENS.finditer(head):
        token = match.group()
        if depth == 0 and previous:
            return None  # the top-level object has ended
        if token[0] in _OPENERS:
            depth += 1
        elif token[0] in _CLOSERS:
            depth -= 1
        elif depth == 1 and token == b":" and previous == b'"id"':
            return _id_value(head, match.end())
        previous = token
    return None


def _id_value(line: bytes, start: int) -> AnswerId:
    found = _ID_VALUE.match(line, start)
    if found is None:
        return None
    raw = found.group(1)
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        try:
            json.loads(raw.decode("utf-8"))  # lenient: accepts lone surrogates, not bad UTF-8
        except ValueError:
            return None
        return msgspec.Raw(raw)
    return value if _usable_id(value) else None


def _decode_problem(line: bytes | bytearray, exc: msgspec.DecodeError) -> str:
    if (lone := _lone_surrogate(line)) is not None:
        return f"a string holds a lone UTF-16 surrogate escape `{lone.decode()}`, which is not valid Unicode"
    return str(exc)


def _lone_surrogate(line: bytes | bytearray) -> bytes | None:
    """The first surrogate escape in `line` that is not half of a pair, if any."""
    high: re.Match[bytes] | None = None
    for escape in _SURROGATE_ESCAPE.finditer(line):
        is_low = escape.group()[3] in _LOW_SURROGATE
        if high is not None:
            if is_low and escape.start() == high.end():
                high = None
                continue
            return high.group()
        if is_low:
            return escape.group()
        high = escape
    return None if high is None else high.group()


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
    id: Any  # an AnswerId: a raw id is written as it came, None as `null`


class _ServerRequest(msgspec.Struct):
    id: int
    method: str
    params: Any


class _Notification(msgspec.Struct, rename="camel", omit_defaults=True):
    method: str
    params: Any
    emitted_at_ms: int
    thread_seq: int = 0
    """The number of the thread event it comes from (a Spindle extension; Codex's clients ignore
    members they do not know). 0, left out: it comes from no thread event."""


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

    def error(self, request_id: AnswerId, error: RpcError) -> bytes:
        return self._line(_ErrorResponse(_ErrorBody(error.code, error.message, error.data), request_id))

    def request(self, request_id: int, method: str, params: Any) -> bytes:
        """A server request (no `emittedAtMs`: Codex's carry none)."""
        return self._line(_ServerRequest(request_id, method, params))

    def notification(self, method: str, params: Any, seq: int = 0) -> bytes:
        return self._line(_Notification(method, params, now_ms(), seq))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the handshake ----------------------------------------------------------


class Handshake:
    """Per-connection state: `initialize` exactly once, before anything else."""

    def __init__(self) -> None:
        self.initialized = False
        self.experimental_api = False
        """The client opted into experimental methods and fields (`capabilities.experimentalApi`)."""
        self.opted_out: frozenset[str] = frozenset()
        """Notification methods this client is never sent (`capabilities.optOutNotificationMethods`,
        exact names)."""

    def check(self, method: str) -> None:
        """RpcError unless `method` may run now."""
        if method == "initialize":
            if self.initialized:
                raise invalid_request("Already initialized")
        elif not self.initialized:
            raise invalid_request("Not initialized")

    def done(self, *, experimental_api: bool = False, opted_out: frozenset[str] = frozenset()) -> None:
        self.initialized = True
        self.experimental_api = experimental_api
        self.opted_out = opted_out

    def require_experimental(self, what: str) -> None:
        """RpcError unless the client opted into experimental API (`what`: a method or `method.field`)."""
        if not self.experimental_api:
            raise invalid_request(f"{what} requires experimentalApi capability")
