"""Requests from the server to a client (approvals, calls of the client's dynamic tools, the
model's questions to the user), and the op each answer becomes.

`item/commandExecution/requestApproval` and `item/fileChange/requestApproval` carry Codex 0.171's
params; every request ends with `serverRequest/resolved`. A decision maps onto the runtime's
`ReviewDecision`: `accept` runs it, `acceptForSession` also stops asking for the same request for
the rest of the thread, `decline` does not run it (the model is told; the turn goes on), `cancel`
does not run it and interrupts the turn. `acceptWithExecpolicyAmendment` is taken as `accept`
(Spindle keeps no exec policy). `item/permissions/requestApproval` is answered with what is
granted and for how long (`scope`); an error answer grants nothing.
(Spindle keeps no exec policy). `item/tool/requestUserInput` carries the model's questions; the
answers (`{"answers": {<question id>: {"answers": [...]}}}`) become a `user_input_answer`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..ops import (
    DynamicToolResponseOp,
    ExecApprovalOp,
    Op,
    PatchApprovalOp,
    RequestPermissionsResponseOp,
    UserInputAnswerOp,
)
from ..questions import UserInputAnswer, UserInputQuestion, UserInputResponse
from ..sandbox import (
    FileSystemPermissions,
    NetworkPermissions,
    PermissionGrant,
    RequestedPermissions,
)
from ..settings import ReviewDecision
from .v2 import Wire

COMMAND_APPROVAL = "item/commandExecution/requestApproval"
PATCH_APPROVAL = "item/fileChange/requestApproval"
PERMISSIONS_APPROVAL = "item/permissions/requestApproval"
TOOL_CALL = "item/tool/call"
USER_INPUT = "item/tool/requestUserInput"
RESOLVED = "serverRequest/resolved"

DECISIONS: dict[str, ReviewDecision] = {
    "accept": "approved", "acceptForSession": "approved_for_session", "decline": "denied", "cancel": "abort",
}
AMENDED = ("acceptWithExecpolicyAmendment", "applyNetworkPolicyAmendment")
"""Object-shaped decisions that approve the request (their amendment is not kept)."""


class CommandApprovalParams(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    item_id: str
    started_at_ms: int
    command: str
    cwd: str
    reason: str | None = None
    kind: Literal["command"] = "command"
    environment_id: str = "local"
    command_actions: list[dict[str, Any]] = msgspec.field(default_factory=list)
    available_decisions: list[str] = msgspec.field(default_factory=lambda: ["accept", "acceptForSession", "decline", "cancel"])


class PatchApprovalParams(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    item_id: str
    started_at_ms: int
    reason: str | None = None
    grant_root: str | None = None


class FileSystemGrant(Wire, kw_only=True, omit_defaults=True):
    read: list[str] | None = None
    write: list[str] | None = None
    entries: list[Any] | None = None
    """Codex's newer form (`FileSystemSandboxEntry`); Spindle takes `read`/`write` only."""


class NetworkGrant(Wire, kw_only=True, omit_defaults=True):
    enabled: bool | None = None


class PermissionsWire(Wire, kw_only=True, omit_defaults=True):
    """`{fileSystem?, network?}`: what is asked for, or granted."""

    file_system: FileSystemGrant | None = None
    network: NetworkGrant | None = None


class PermissionsApprovalParams(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    item_id: str
    cwd: str
    started_at_ms: int
    permissions: PermissionsWire
    reason: str | None = None
    environment_id: str = "local"


class _PermissionsAnswer(Wire, kw_only=True):
    permissions: PermissionsWire = msgspec.field(default_factory=PermissionsWire)
    scope: Literal["turn", "session"] = "turn"


_permissions_answer = msgspec.json.Decoder(_PermissionsAnswer)


def permissions_wire(permissions: RequestedPermissions) -> PermissionsWire:
    fs, net = permissions.file_system, permissions.network
    return PermissionsWire(file_system=FileSystemGrant(read=fs.read, write=fs.write) if fs else None,
                           network=NetworkGrant(enabled=net.enabled) if net else None)


def _grant(answer: _PermissionsAnswer) -> PermissionGrant:
    fs, net = answer.permissions.file_system, answer.permissions.network
    return PermissionGrant(scope=answer.scope, permissions=RequestedPermissions(
        file_system=FileSystemPermissions(read=fs.read, write=fs.write) if fs else None,
        network=NetworkPermissions(enabled=net.enabled) if net else None))


class ToolCallParams(Wire, kw_only=True):
    thread_id: str
    turn_id: str
    call_id: str
    tool: str
    namespace: str | None = None
    arguments: Any = None


class UserInputOptionV2(Wire, kw_only=True):
    label: str
    description: str


class UserInputQuestionV2(Wire, kw_only=True):
    id: str
    header: str
    question: str
    is_other: bool = False
    is_secret: bool = False
    options: list[UserInputOptionV2] | None = None


def questions_v2(questions: list[UserInputQuestion]) -> list[UserInputQuestionV2]:
    return [UserInputQuestionV2(
        id=q.id, header=q.header, question=q.question, is_other=q.is_other, is_secret=q.is_secret,
        options=None if q.options is None else [UserInputOptionV2(label=o.label, description=o.description) for o in q.options],
    ) for q in questions]


class UserInputParams(Wire, kw_only=True):
    """`item/tool/requestUserInput`: `itemId` is the model's call id; no item is made of it."""

    thread_id: str
    turn_id: str
    item_id: str
    questions: list[UserInputQuestionV2]
    is_blocking: bool = True
    auto_resolution_ms: int | None = None


class ServerRequestResolved(Wire, kw_only=True):
    thread_id: str
    request_id: int | str


class _Answer(msgspec.Struct):
    decision: Any = msgspec.UNSET


_answer = msgspec.json.Decoder(_Answer)


class BadAnswer(ValueError):
    """An answer the request cannot take (it stays pending); the message says what it takes."""


class BadDecision(BadAnswer):
    """An answer that is not one of the decisions; the message names the allowed ones."""


def review_decision(result: bytes, method: str) -> ReviewDecision:
    """The decision in a client's `result` to an approval request of `method`."""
    allowed = ", ".join(DECISIONS) + (", {" + "|".join(AMENDED) + ": ...}" if method == COMMAND_APPROVAL else "")
    try:
        decision = _answer.decode(result).decision
    except msgspec.DecodeError as exc:
        raise BadDecision(f"the answer to {method} must be an object with a `decision`: {exc}") from None
    if isinstance(decision, str) and decision in DECISIONS:
        return DECISIONS[decision]
    if method == COMMAND_APPROVAL and isinstance(decision, dict) and len(decision) == 1 and next(iter(decision)) in AMENDED:
        return "approved"
    shown = "missing" if decision is msgspec.UNSET else repr(decision)[:60]
    raise BadDecision(f"the decision for {method} is {shown}; allowed: {allowed}")


class _ToolAnswer(msgspec.Struct, rename="camel"):
    content_items: list[dict[str, Any]]
    success: bool = True


_tool_answer = msgspec.json.Decoder(_ToolAnswer)


class _UserInputResult(msgspec.Struct):
    answers: dict[str, UserInputAnswer]  # required: `{}` is no answer


_user_input_answer = msgspec.json.Decoder(_UserInputResult)
_error_message = msgspec.json.Decoder(dict[str, Any])


def answer_op(method: str, key: str, result: bytes | None, error: bytes | None) -> Op:
    """The op a client's answer to request `method` (about the thread's request `key`) becomes:
    a decision for an approval (an error answer declines; BadDecision for a decision that is
    none), a result for a tool call (an error or a malformed answer fails the call), the user's
    answers to questions (an error answer tells the model so; BadAnswer for a malformed one)."""
    if method == USER_INPUT:
        return user_input_answer_op(key, result, error)
    if method == TOOL_CALL:
        try:
            answer = _tool_answer.decode(result) if error is None and result is not None else None
        except msgspec.DecodeError as exc:
            problem = f"the client's answer is not a tool result ({{contentItems, success}}): {exc}"
        else:
            if answer is not None:
                return DynamicToolResponseOp(id=key, content_items=answer.content_items, success=answer.success)
            problem = f"the client failed the call: {_message_of(error)}"
        return DynamicToolResponseOp(id=key, content_items=[{"type": "inputText", "text": problem}], success=False)
    if method == PERMISSIONS_APPROVAL:
        if error is not None:
            return RequestPermissionsResponseOp(id=key)  # nothing granted
        try:
            grant = _permissions_answer.decode(result or b"null")
        except msgspec.DecodeError as exc:
            raise BadDecision(f"the answer to {method} must be {{permissions: {{fileSystem?, network?}}, "
                              f"scope: \"turn\"|\"session\"}}: {exc}") from None
        if grant.permissions.file_system is not None and grant.permissions.file_system.entries:
            raise BadDecision(f"the answer to {method} grants fileSystem.entries, which Spindle does not take: "
                              "grant the paths asked for with fileSystem.read / fileSystem.write")
        return RequestPermissionsResponseOp(id=key, response=_grant(grant))
    decision: ReviewDecision = "denied" if error is not None else review_decision(result or b"null", method)
    return (ExecApprovalOp if method == COMMAND_APPROVAL else PatchApprovalOp)(id=key, decision=decision)


def user_input_answer_op(key: str, result: bytes | None, error: bytes | None) -> UserInputAnswerOp:
    if error is not None:
        return UserInputAnswerOp(id=key, error=f"the client answered with an error: {_message_of(error)}")
    try:
        response = _user_input_answer.decode(result or b"null")
    except msgspec.DecodeError as exc:
        raise BadAnswer(f'the answer to {USER_INPUT} must be {{"answers": {{<question id>: {{"answers": '
                        f'[<text>, ...]}}}}}}: {exc}') from None
    return UserInputAnswerOp(id=key, response=UserInputResponse(answers=response.answers))


def _message_of(error: bytes | None) -> str:
    try:
        body = _error_message.decode(error or b"{}")
    except msgspec.DecodeError:
        return "no message"
    return str(body.get("message", "no message"))[:500]

