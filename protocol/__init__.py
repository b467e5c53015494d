"""Spindle's wire and data types: pure msgspec structs, no I/O, no event loop.

Names are imported on first use (PEP 562), so a module of a subpackage (the proxy's
`appserver.wsframe`) loads without msgspec and the structs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .events import (
        AgentMessageDeltaEvent,
        AgentMessageEvent,
        EnteredReviewModeEvent,
        ErrorEvent,
        Event,
        EventMsg,
        ExecCommandOutputDeltaEvent,
        ExitedReviewModeEvent,
        ItemCompletedEvent,
        ItemStartedEvent,
        RequestUserInputEvent,
        SessionConfiguredEvent,
        ShutdownCompleteEvent,
        StreamErrorEvent,
        TaskCompleteEvent,
        TaskStartedEvent,
        ThreadRolledBackEvent,
        TokenCountEvent,
        TokenUsage,
        TokenUsageInfo,
        TurnAbortedEvent,
        WarningEvent,
    )
    from .items import (
        FunctionCall,
        FunctionCallOutput,
        ImageInput,
        LocalImageInput,
        Message,
        Reasoning,
        ResponseItem,
        TextInput,
        UserInput,
    )
    from .ops import (
        CompactOp,
        ExecApprovalOp,
        InterruptOp,
        Op,
        OverrideTurnContextOp,
        PatchApprovalOp,
        RefreshMcpServersOp,
        ReloadUserConfigOp,
        ReviewOp,
        RunUserShellCommandOp,
        SetThreadMemoryModeOp,
        ShutdownOp,
        Submission,
        ThreadRollbackOp,
        UserInputAnswerOp,
        UserInputOp,
        UserTurnOp,
    )
    from .review import (
        BaseBranchTarget,
        CommitTarget,
        CustomTarget,
        ReviewFinding,
        ReviewOutput,
        ReviewRequest,
        ReviewTarget,
        UncommittedChangesTarget,
    )
    from .settings import (
        ApprovalPolicy,
        CollaborationMode,
        SandboxMode,
        SettingsUpdate,
        ThreadSettings,
    )

_SUBMODULES = ("events", "items", "ops", "review", "settings")
"""Where the names of `__all__` live."""

__all__ = [
    "BaseBranchTarget",
    "CommitTarget",
    "CustomTarget",
    "EnteredReviewModeEvent",
    "ExitedReviewModeEvent",
    "ReviewFinding",
    "ReviewOp",
    "ReviewOutput",
    "ReviewRequest",
    "ReviewTarget",
    "UncommittedChangesTarget",
    "ExecApprovalOp",
    "PatchApprovalOp",
    "RefreshMcpServersOp",
    "ReloadUserConfigOp",
    "RunUserShellCommandOp",
    "SetThreadMemoryModeOp",
    "ApprovalPolicy",
    "CollaborationMode",
    "SandboxMode",
    "SettingsUpdate",
    "ThreadSettings",
    "AgentMessageDeltaEvent",
    "ExecCommandOutputDeltaEvent",
    "AgentMessageEvent",
    "CompactOp",
    "ErrorEvent",
    "Event",
    "EventMsg",
    "FunctionCall",
    "FunctionCallOutput",
    "ImageInput",
    "InterruptOp",
    "ItemCompletedEvent",
    "ItemStartedEvent",
    "LocalImageInput",
    "Message",
    "Op",
    "OverrideTurnContextOp",
    "Reasoning",
    "RequestUserInputEvent",
    "ResponseItem",
    "SessionConfiguredEvent",
    "ShutdownCompleteEvent",
    "ShutdownOp",
    "StreamErrorEvent",
    "Submission",
    "TaskCompleteEvent",
    "TaskStartedEvent",
    "TextInput",
    "ThreadRollbackOp",
    "ThreadRolledBackEvent",
    "TokenCountEvent",
    "TokenUsage",
    "TokenUsageInfo",
    "TurnAbortedEvent",
    "UserInput",
    "UserInputAnswerOp",
    "UserInputOp",
    "UserTurnOp",
    "WarningEvent",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        for submodule in _SUBMODULES:
            module = importlib.import_module(f"{__name__}.{submodule}")
            if hasattr(module, name):
                value = getattr(module, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
