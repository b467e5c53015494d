from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.appserver import AppServer
from spindle.actors.runtime import ThreadManager, open_runtime, turn
from spindle.actors.runtime.config import config_from_mapping
from spindle.actors.runtime.tools import ToolRegistry
from spindle.actors.testing.mock_model import MockModel
from spindle.actors.testing.rpc_client import RpcClient, in_memory
from spindle.protocol.config import Config

pytest_plugins = ["tests.pg_helpers"]  # the PostgreSQL fixtures: pg_schema, pg_store


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off by a millisecond in tests, not the production 200 ms."""
    monkeypatch.setattr(turn, "RETRY_BASE_DELAY_S", 0.001)


@pytest.fixture(autouse=True)
def sandbox_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's per-thread /tmp folders go under the test's own temp dir, not the user's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))


@pytest.fixture
async def mock_model(nursery: trio.Nursery) -> MockModel:
    return await nursery.start(MockModel().run)


@pytest.fixture
def make_config(tmp_path: Path, mock_model: MockModel) -> Callable[..., Config]:
    def make(provider: dict[str, Any] | None = None, **extra: Any) -> Config:
        data: dict[str, Any] = {
            "model": "mock-model",
            "model_provider": "mock",
            "model_providers": {
                "mock": mock_model.provider_config(
                    **{"request_max_retries": 1, "stream_max_retries": 1, **(provider or {})}
                )
            },
            "approval_policy": "never",
            "sandbox_mode": "danger-full-access",
            "cwd": str(tmp_path),
            "thread_unload_delay_secs": 0,  # a thread no client holds unloads once idle (tests of the delay set one)
            **extra,
        }
        return config_from_mapping(data, source="test config", home=tmp_path / "home")

    return make


@pytest.fixture
async def runtime(make_config: Callable[..., Config]) -> AsyncIterator[ThreadManager]:
    async with open_runtime(make_config()) as rt:
        yield rt


@pytest.fixture
def make_runtime(make_config: Callable[..., Config]) -> Callable[..., Any]:
    def make(tools: ToolRegistry | None = None, **config: Any) -> Any:
        return open_runtime(make_config(**config), tools=tools)

    return make


@pytest.fixture
async def server(make_config: Callable[..., Config]) -> AsyncIterator[AppServer]:
    """An app-server on a runtime whose sandbox is read-only."""
    async with open_runtime(make_config(sandbox_mode="read-only")) as manager, trio.open_nursery() as nursery:
        yield await nursery.start(AppServer(manager).run)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client(server: AppServer) -> AsyncIterator[RpcClient]:
    """An initialized in-memory client of `server`."""
    async with in_memory(server) as client:
        await client.initialize()
        yield client
