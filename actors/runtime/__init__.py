"""The thread runtime: thread actors, the turn loop, handles, fan-out, the manager, the model
client, tools, settings and config loading. It imports nothing above it (no app-server, CLI,
load tool or test helpers)."""

from .config import ConfigError, codex_home, load_config
from .config_layers import LayeredConfig
from .errors import ThreadClosedError, ThreadNotFoundError, TurnAbortedError, TurnError
from .fanout import Broadcaster, Lagged, Subscription
from .handle import ThreadHandle
from .journal import HistoryView
from .manager import ThreadManager, open_runtime
from .mcp_refresh import McpRefreshError
from .outcomes import SubmissionOutcome
from .registry import ThreadShutdownReport
from .replay import ReplayTooOld
from .tools import Tool, ToolContext, ToolRegistry

__all__ = [
    "Broadcaster",
    "ConfigError",
    "HistoryView",
    "Lagged",
    "LayeredConfig",
    "McpRefreshError",
    "ReplayTooOld",
    "Subscription",
    "SubmissionOutcome",
    "ThreadClosedError",
    "ThreadHandle",
    "ThreadManager",
    "ThreadNotFoundError",
    "ThreadShutdownReport",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "TurnAbortedError",
    "TurnError",
    "codex_home",
    "load_config",
    "open_runtime",
]
