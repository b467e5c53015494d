"""The thread manager: tracking, creation notices, bounded shutdown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import ThreadClosedError, ThreadManager, ThreadNotFoundError
from spindle.actors.runtime.config import ConfigError
from spindle.actors.runtime.exec_command import ExecCommandTool
from spindle.actors.runtime.tools import ToolContext, ToolRegistry
from spindle.actors.testing.mock_model import Call, MockModel, Text
from spindle.protocol.events import ItemStartedEvent
from spindle.protocol.items import CommandExecutionItem, TextInput
from spindle.protocol.ops import UserInputOp
from spindle.protocol.settings import SettingsUpdate

from .helpers import collect_until


class StubbornTool:
    """A tool that ignores cancellation until released: a thread that will not stop in time."""

    name = "stubborn"

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "parameters": {"type": "object", "properties": {}}}

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        ctx.item_started(CommandExecutionItem(id=ctx.call_id, command="stubborn", cwd=ctx.settings.cwd, status="inProgress"))
        self.entered.set()
        with trio.CancelScope(shield=True):
            await self.release.wait()
        return "released"


async def test_tracking_and_created_notices(runtime: ThreadManager) -> None:
    created = runtime.subscribe_thread_created()
    a = await runtime.start_thread()
    b = await runtime.start_thread()
    assert runtime.list_thread_ids() == sorted([a.thread_id, b.thread_id])
    assert [created.receive_nowait(), created.receive_nowait()] == [a.thread_id, b.thread_id]
    assert runtime.get_thread(a.thread_id) is a
    assert runtime.remove_thread(a.thread_id) is a
    assert runtime.remove_thread(a.thread_id) is None
    with pytest.raises(ThreadNotFoundError, match="thread not found"):
        runtime.get_thread(a.thread_id)


async def test_unknown_provider_is_a_clear_error(runtime: ThreadManager) -> None:
    with pytest.raises(ConfigError, match="unknown model provider 'nowhere'"):
        await runtime.start_thread(SettingsUpdate(provider_id="nowhere"))
    with pytest.raises(ValueError, match="invalid thread id '../../etc/passwd'"):
        await runtime.start_thread(thread_id="../../etc/passwd")


async def test_bounded_shutdown_reports_each_outcome(make_runtime: Callable[..., Any], mock_model: MockModel) -> None:
    stubborn = StubbornTool()
    async with make_runtime(tools=ToolRegistry([ExecCommandTool(), stubborn])) as rt:
        idle = await rt.start_thread()
        busy = await rt.start_thread()
        gone = await rt.start_thread()
        gone.close()  # its actor ends; a shutdown submission can no longer be delivered
        await gone.wait_closed()
        mock_model.script(Call(name="stubborn", arguments={}), Text(text="done"), thread_id=busy.thread_id)
        with busy.events() as events:
            await busy.submit(UserInputOp(items=[TextInput(text="work")]))
            await collect_until(events, ItemStartedEvent)
        await stubborn.entered.wait()
        report = await rt.shutdown_all_threads_bounded(timeout=0.2)
        assert report.completed == [idle.thread_id]
        assert report.submit_failed == [gone.thread_id]
        assert report.timed_out == [busy.thread_id]
        # incomplete shutdowns stay tracked; completed ones are removed
        assert rt.list_thread_ids() == sorted([busy.thread_id, gone.thread_id])
        stubborn.release.set()
        await busy.wait_closed()
        with pytest.raises(ThreadClosedError):
            await idle.ask("anyone there?")


async def test_start_thread_selects_a_profile_and_runtime_roots(runtime: ThreadManager, tmp_path: Path) -> None:
    """The embedding API: `start_thread(permissions=..., runtime_workspace_roots=...)`."""
    (tmp_path / "extra").mkdir()
    thread = await runtime.start_thread(permissions=":workspace", runtime_workspace_roots=[".", "extra"])
    assert thread.settings.permissions == ":workspace" and thread.settings.sandbox_mode == "workspace-write"
    assert thread.settings.runtime_workspace_roots == (str(tmp_path), str(tmp_path / "extra"))
    legacy = await runtime.start_thread()
    assert (legacy.settings.permissions, legacy.settings.sandbox_mode) == (None, "danger-full-access")
    with pytest.raises(ConfigError, match="unknown permission profile 'ghost'; known profiles: :read-only"):
        await runtime.start_thread(permissions="ghost")
    with pytest.raises(ConfigError, match="runtime workspace root 'nowhere' does not exist"):
        await runtime.start_thread(runtime_workspace_roots=["nowhere"])


async def test_start_thread_refuses_a_profile_with_a_sandbox_mode_and_a_string_of_roots(runtime: ThreadManager, tmp_path: Path) -> None:
    """As the wire does: a profile and a legacy sandbox mode are one choice; roots are a list."""
    with pytest.raises(ConfigError, match=r"`permissions` \(':read-only'\) cannot be combined with `sandbox_mode` \('danger-full-access'\)"):
        await runtime.start_thread(SettingsUpdate(sandbox_mode="danger-full-access"), permissions=":read-only")
    with pytest.raises(TypeError, match="runtime_workspace_roots must be a list of paths, not a single str"):
        await runtime.start_thread(runtime_workspace_roots=str(tmp_path))
    assert runtime.list_thread_ids() == []
