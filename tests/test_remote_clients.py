"""What the real Codex 0.171 clients ask of a server they did not start, replayed.

The TUI's (`codex --remote`) and `codex exec --remote`'s start-up, request by request as
../shared/reference/remote-clients.md recorded them from the real clients (the ids with their
JSON types, every param with its explicit nulls, the pipelining), sent over a WebSocket listener;
every answer and every notification is checked against the 0.171 JSON schema (vendored in
tests/fixtures, as `codex app-server generate-json-schema --experimental` wrote it). Then the
methods the TUI needs, one by one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio

from spindle.actors.appserver.listeners import serve
from spindle.actors.runtime import ThreadManager, open_runtime
from spindle.actors.testing.mock_model import MockModel, Text
from spindle.actors.testing.rpc_client import RpcClient, RpcFailure, websocket_client
from spindle.protocol.appserver.jsonrpc import KNOWN_UNSUPPORTED, SUPPORTED, method_error
from spindle.protocol.config import Config

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "app-server-v2-0.171.schema.json").read_text())
DEFINITIONS = SCHEMA["definitions"]
RESPONSE_NAMES = {"configRequirements/read": "ConfigRequirementsReadResponse"}
"""A method whose response is not named after its params (it has none)."""


# --- the schema ---------------------------------------------------------------------------------


def response_name(method: str) -> str:
    """The schema's response definition of `method`: its params' name with `Response` for `Params`."""
    if method in RESPONSE_NAMES:
        return RESPONSE_NAMES[method]
    for request in DEFINITIONS["ClientRequest"]["oneOf"]:
        if request["properties"]["method"]["enum"] == [method]:
            name = str(request["properties"]["params"]["$ref"]).rsplit("/", 1)[1]
            return name.removesuffix("Params") + "Response"
    raise AssertionError(f"{method} is not a client request of the 0.171 schema")


@cache
def validator(name: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator({"$ref": f"#/definitions/{name}", "definitions": DEFINITIONS})


def problems(name: str, value: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message[:300]}" for e in validator(name).iter_errors(value)]


def check_initialize(result: dict[str, Any]) -> None:
    """The one answer the v2 bundle has no definition of: remote-clients.md §3's shape."""
    assert set(result) >= {"userAgent", "codexHome", "platformFamily", "platformOs"}
    assert all(isinstance(result[key], str) for key in ("userAgent", "codexHome", "platformFamily", "platformOs"))
    version = result["userAgent"].split("/", 1)[1].split()[0]  # where the clients read the server's version
    assert version.count(".") == 2 and all(part.isdigit() for part in version.split("."))


class Replay:
    """A client whose every answer and notification is checked against the 0.171 schema."""

    def __init__(self, client: RpcClient) -> None:
        self.client = client
        self.answers: dict[str, list[Any]] = {}

    async def call(self, method: str, params: dict[str, Any] | None, request_id: int | str) -> Any:
        message: dict[str, Any] = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        reply = await self.client.send_message(message)
        assert reply["id"] == request_id and type(reply["id"]) is type(request_id), reply
        if "error" in reply:
            raise RpcFailure(reply["error"])
        result = reply["result"]
        if method == "initialize":
            check_initialize(result)
        else:
            assert not (found := problems(response_name(method), result)), f"{method}: {found}"
        self.answers.setdefault(method, []).append(result)
        return result

    async def pipelined(self, *requests: tuple[str, dict[str, Any] | None, int | str]) -> list[Any]:
        """Several requests sent without waiting, as the clients do; their answers in request order."""
        results: list[Any] = [None] * len(requests)

        async def one(index: int, request: tuple[str, dict[str, Any] | None, int | str]) -> None:
            results[index] = await self.call(*request)

        async with trio.open_nursery() as nursery:
            for index, request in enumerate(requests):
                nursery.start_soon(one, index, request)
        return results

    def check_notifications(self) -> None:
        for note in self.client.notifications:
            assert isinstance(note.get("emittedAtMs"), int), note
            assert not (found := problems("ServerNotification", note)), f"{note['method']}: {found}"


def tagged(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4()}"


# --- the clients' requests, as recorded -----------------------------------------------------------

TUI_INITIALIZE = {"clientInfo": {"name": "codex-tui", "title": None, "version": "0.171.0"}, "capabilities": {
    "requiredHumanApproval": True, "experimentalApi": True, "requestAttestation": False, "optOutNotificationMethods": None}}
EXEC_INITIALIZE = {"clientInfo": {"name": "codex_exec", "title": None, "version": "0.171.0"}, "capabilities": {
    "experimentalApi": True, "requestAttestation": False, "optOutNotificationMethods": None}}


def _function(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": f"{name} (the TUI's)", "deferLoading": True, "inputSchema": {
        "type": "object", "additionalProperties": False, "properties": properties, "required": required}}


LIMIT = {"type": "integer", "minimum": 1, "maximum": 50}
TUI_DYNAMIC_TOOLS = [{
    "type": "namespace", "name": "codex_tui",
    "description": "Manage Codex tasks available through the connected app server.",
    "tools": [
        _function("list_threads", {"limit": LIMIT}, []),
        _function("list_archived_threads", {"limit": LIMIT, "cursor": {"type": "string"}}, []),
        _function("read_thread", {"threadId": {"type": "string"}, "cursor": {"type": "string"},
                                  "turnLimit": {"type": "integer", "minimum": 1, "maximum": 10},
                                  "includeOutputs": {"type": "boolean"},
                                  "maxOutputCharsPerItem": {"type": "integer", "minimum": 0, "maximum": 20000}}, ["threadId"]),
        _function("wait_threads", {"targets": {"type": "array", "minItems": 1, "maxItems": 8, "items": {
            "type": "object", "properties": {"threadId": {"type": "string"}, "afterCursor": {"type": "string"}},
            "required": ["threadId"]}}, "timeoutMs": {"type": "integer", "minimum": 0, "maximum": 120000}}, ["targets"]),
        _function("set_thread_title", {"threadId": {"type": "string"}, "title": {"type": "string"}}, ["title"]),
        _function("set_thread_archived", {"threadId": {"type": "string"}, "archived": {"type": "boolean"}}, ["archived"]),
    ],
}]

THREAD_START_NULLS = dict.fromkeys((
    "model", "modelProvider", "cwd", "runtimeWorkspaceRoots", "approvalPolicy", "approvalsReviewer", "sandbox",
    "permissions", "config", "ephemeral", "historyMode", "threadSource", "dynamicTools", "serviceName",
    "baseInstructions", "developerInstructions", "personality", "multiAgentMode", "sessionStartSource", "projectId",
    "daybreakEnabled", "environments", "selectedCapabilityRoots", "mockExperimentalField"))
TUI_THREAD_START = {**THREAD_START_NULLS, "sandbox": "read-only", "config": {}, "ephemeral": False,
                    "historyMode": "paginated", "threadSource": "user", "dynamicTools": TUI_DYNAMIC_TOOLS}
EXEC_THREAD_START = {**THREAD_START_NULLS, "approvalPolicy": "never"}


def exec_turn_start(thread_id: str, text: str) -> dict[str, Any]:
    """exec's `turn/start`: every key of 0.171's params, null unless exec sets it."""
    params = dict.fromkeys(DEFINITIONS["TurnStartParams"]["properties"])
    return {**params, "threadId": thread_id, "input": [{"type": "text", "text": text, "text_elements": []}],
            "turnTrigger": "exec", "approvalPolicy": "never"}


def tui_turn_start(started: dict[str, Any], text: str) -> dict[str, Any]:
    """The TUI's `turn/start` for a prompt typed into its composer (captured from the 0.171 TUI
    on Spindle): the thread's settings repeated, a client message id, `turnTrigger: "user"`."""
    model = started["model"]
    return {**exec_turn_start(started["thread"]["id"], text), "clientUserMessageId": str(uuid.uuid4()),
            "turnTrigger": "user", "cwd": started["cwd"], "runtimeWorkspaceRoots": started["runtimeWorkspaceRoots"],
            "approvalPolicy": started["approvalPolicy"], "model": model, "serviceTier": "default",
            "collaborationMode": {"mode": "default", "settings": {
                "model": model, "reasoning_effort": None, "developer_instructions": None}}}


TITLE_THREAD_CONFIG = {
    "features.goals": False, "cloud.skills.enabled": False, "tools.experimental_request_user_input.enabled": False,
    "tools.update_plan.enabled": False, "mcp_servers": {}, "web_search": "disabled", "features.plugins": False,
    "skills.include_instructions": False, "features.request_permissions_tool": False, "features.shell_tool": False,
}
"""Part of the `config` the 0.171 TUI gives the ephemeral thread that titles a new thread."""


async def tui_titles_thread(replay: Replay, started: dict[str, Any], prompt: str) -> None:
    """After the first prompt the TUI asks an ephemeral read-only thread for a title (with an
    `outputSchema`), drops that thread, and names its own (captured from the 0.171 TUI)."""
    title_thread = await replay.call("thread/start", {
        **THREAD_START_NULLS, "model": started["model"], "modelProvider": started["modelProvider"],
        "cwd": started["cwd"], "runtimeWorkspaceRoots": [], "approvalPolicy": "never", "permissions": ":read-only",
        "config": TITLE_THREAD_CONFIG, "ephemeral": True, "threadSource": "thread_title", "environments": [],
        "dynamicTools": [], "selectedCapabilityRoots": []}, tagged("temporary-structured-"))
    tid = title_thread["thread"]["id"]
    schema = {"type": "object", "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 36}},
              "required": ["title"], "additionalProperties": False}
    answer = await replay.call("turn/start", {
        **exec_turn_start(tid, f"Generate a concise, single-line task title.\n\nUser prompt:\n{prompt}"),
        "turnTrigger": None, "approvalPolicy": None, "runtimeWorkspaceRoots": [], "permissions": ":read-only",
        "outputSchema": schema}, tagged("temporary-structured-turn-"))
    await replay.client.wait_turn(answer["turn"]["id"])
    await replay.call("thread/unsubscribe", {"threadId": tid}, tagged("temporary-structured-unsubscribe-"))
    picker = tagged("picker-")
    await replay.call("thread/read", {"threadId": started["thread"]["id"]}, f"{picker}-1")
    await replay.call("thread/name/set", {"threadId": started["thread"]["id"], "name": prompt}, f"{picker}-2")


def thread_list(sort_key: str, source_kinds: list[str], limit: int, **more: Any) -> dict[str, Any]:
    return {"cursor": None, "limit": limit, "sortKey": sort_key, "sortDirection": None, "modelProviders": [],
            "sourceKinds": source_kinds, "archived": False, "cwd": None, "searchTerm": None, "useStateDbOnly": True,
            "currentAccountOnly": True, "ancestorThreadId": None, "parentThreadId": None, **more}


PINNED = "01984de2-8f74-7c91-a3b2-5c5e937cf318"
"""The section the TUI asks for (Codex's pinned threads)."""


async def tui_startup(replay: Replay, tui_cwd: str) -> dict[str, Any]:
    """remote-clients.md §6, in order; the answers of the requests after `configRequirements/read`,
    by method, in request order."""
    initialized = await replay.call("initialize", TUI_INITIALIZE, "initialize")
    assert initialized["userAgent"].split("/", 1)[1].split()[0] == "0.171.0"  # no "older server" warning
    await replay.client.send_raw(b'{"method":"initialized"}\n')
    await replay.pipelined(
        ("account/read", {}, 1),
        ("model/list", {"modelProvider": None, "cursor": None, "limit": None, "includeHidden": True}, 2),
        ("hooks/list", {"cwds": [tui_cwd], "threadId": None}, tagged("hooks-list-")),
        ("account/bedrock/checkGovCloudRequirements", {}, tagged()),
        ("config/read", {"includeLayers": True, "cwd": "."}, tagged("tui-config-read-")),
        ("account/read", {}, 3),
        ("configRequirements/read", None, 4),
        ("collaborationMode/list", {}, tagged("collaboration-mode-list-")),
    )
    started = await replay.call("thread/start", TUI_THREAD_START, tagged("startup-thread-start-"))
    thread = started["thread"]
    listed = await replay.pipelined(
        ("thread/list", thread_list("section_position", [], 100, sectionId=PINNED), tagged()),
        ("thread/list", thread_list("section_position", ["exec", "appServer"], 100, sectionId=PINNED), tagged()),
        ("thread/loaded/list", {"cursor": None, "limit": None}, tagged()),
        ("thread/list", thread_list("recency_at", [], 10), tagged()),
        ("thread/list", thread_list("recency_at", ["exec", "appServer"], 10), tagged()),
    )
    for tid in listed[2]["data"]:
        await replay.call("thread/read", {"threadId": tid}, tagged())
    turns_list = {"threadId": thread["id"], "cursor": None, "limit": 1, "sortDirection": None, "itemsView": None}
    with pytest.raises(RpcFailure, match="is not materialized yet") as refused:  # tolerated; as Codex answers
        await replay.call("thread/turns/list", turns_list, tagged())
    assert refused.value.code == -32600
    spawned = {"sourceKinds": ["subAgentThreadSpawn"], "ancestorThreadId": thread["id"], "sortDirection": "desc",
               "limit": 100, "useStateDbOnly": True}
    later = await replay.pipelined(
        ("thread/list", {**spawned, "archived": False}, tagged()),
        ("thread/list", {**spawned, "archived": True}, tagged()),
        ("skills/list", {"cwds": [thread["cwd"]], "forceReload": True}, 5),
        ("skills/list", {"cwds": [tui_cwd], "forceReload": True}, tagged("startup-skills-list-")),
        *[("plugin/installed", {"cwds": [tui_cwd], "installSuggestionPluginNames": None}, tagged("plugin-installed-"))
          for _ in range(3)],
    )
    return {"thread/start": started, "thread/list": [*listed[:2], *listed[3:], *later[:2]],
            "thread/loaded/list": listed[2], "skills/list": later[2:4], "plugin/installed": later[4:]}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def server_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server process's working directory (the config names none)."""
    cwd = tmp_path / "server"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@asynccontextmanager
async def serving_ws(runtime: ThreadManager) -> AsyncIterator[str]:
    """A WebSocket listener on `runtime`; its URL."""
    async with trio.open_nursery() as nursery:
        (bound,) = await nursery.start(lambda task_status: serve(runtime, "ws://127.0.0.1:0", task_status=task_status))
        yield bound.url
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def ws_server(config: Config) -> AsyncIterator[str]:
    """A WebSocket listener on a runtime of `config`; its URL."""
    async with open_runtime(config) as runtime, serving_ws(runtime) as url:
        yield url


@pytest.fixture
def tui_config(make_config: Callable[..., Config], server_cwd: Path) -> Config:
    return make_config(cwd=None, approval_policy="on-request", sandbox_mode="read-only")


# --- the replays ----------------------------------------------------------------------------------


async def test_the_tuis_start_up_replayed(tui_config: Config, server_cwd: Path, tmp_path: Path, mock_model: MockModel) -> None:
    tui_cwd = tmp_path / "tui"  # the TUI's own directory: not the server's
    tui_cwd.mkdir()
    async with ws_server(tui_config) as url, websocket_client(url) as client:
        replay = Replay(client)
        answers = await tui_startup(replay, str(tui_cwd))
        started = answers["thread/start"]
        thread = started["thread"]
        # the server's cwd, not the TUI's (it sent `cwd: null`)
        assert started["cwd"] == thread["cwd"] == str(server_cwd)
        assert started["runtimeWorkspaceRoots"] == [str(server_cwd)]
        assert started["approvalPolicy"] == "on-request" and started["approvalsReviewer"] == "user"
        assert started["sandbox"] == {"type": "readOnly", "networkAccess": False}
        assert started["activePermissionProfile"] is None  # the legacy `sandbox` was given
        assert replay.answers["account/read"] == [
            {"account": None, "requiresOpenaiAuth": False, "userId": None, "workspaceRouting": None}] * 2
        assert replay.answers["account/bedrock/checkGovCloudRequirements"] == [{"isGovCloud": False, "shouldWarn": False}]
        assert replay.answers["hooks/list"] == [{"data": [{"cwd": str(tui_cwd), "hooks": [], "warnings": [], "errors": []}]}]
        assert [a["data"] for a in answers["skills/list"]] == [
            [{"cwd": str(server_cwd), "skills": [], "errors": []}], [{"cwd": str(tui_cwd), "skills": [], "errors": []}]]
        assert answers["plugin/installed"] == [{"marketplaces": [], "marketplaceLoadErrors": []}] * 3
        assert answers["thread/loaded/list"] == {"data": [thread["id"]], "nextCursor": None}
        # Spindle has no sections; the new thread has no turn yet, so it is not listed; no sub-agents
        assert [page["data"] for page in answers["thread/list"]] == [[]] * 6
        assert not [n for n in client.notifications if n["method"] == "configWarning"]  # the TUI's config is Codex's

        mock_model.script(Text(text="hello from spindle"), thread_id=thread["id"])
        answer = await replay.call("turn/start", tui_turn_start(started, "say hi"), 6)
        turn = await client.wait_turn(answer["turn"]["id"])
        assert turn["status"] == "completed"
        await tui_titles_thread(replay, started, "say hi")
        assert not [n for n in client.notifications if n["method"] in ("configWarning", "warning", "error")]
        replay.check_notifications()
        listed = await replay.call("thread/list", thread_list("recency_at", [], 10), tagged())
        assert [t["id"] for t in listed["data"]] == [thread["id"]]
        assert listed["data"][0]["recencyAt"] == listed["data"][0]["updatedAt"]
        turns = await replay.call("thread/turns/list", {"threadId": thread["id"], "cursor": None, "limit": 1,
                                                        "sortDirection": None, "itemsView": None}, tagged())
        assert [t["id"] for t in turns["data"]] == [turn["id"]]


async def test_exec_replayed(tui_config: Config, server_cwd: Path, mock_model: MockModel) -> None:
    async with ws_server(tui_config) as url, websocket_client(url) as client:
        replay = Replay(client)
        await replay.call("initialize", EXEC_INITIALIZE, "initialize")
        await client.send_raw(b'{"method":"initialized"}\n')
        started = await replay.call("thread/start", EXEC_THREAD_START, 1)
        thread = started["thread"]
        assert thread["cwd"] == str(server_cwd) and started["approvalPolicy"] == "never"
        await client.wait_for("thread/started", lambda p: p["thread"]["id"] == thread["id"])
        mock_model.script(Text(text="hi"), thread_id=thread["id"])
        answer = await replay.call("turn/start", exec_turn_start(thread["id"], "say hi"), 2)
        assert answer["turn"]["status"] == "inProgress" and answer["turn"]["items"] == []
        turn = await client.wait_turn(answer["turn"]["id"])
        assert turn["status"] == "completed"
        replay.check_notifications()
        texts = [n["params"]["item"].get("text") for n in client.notifications
                 if n["method"] == "item/completed" and n["params"]["item"]["type"] == "agentMessage"]
        assert texts == ["hi"]


# --- the methods, one by one ----------------------------------------------------------------------


def test_every_method_of_the_schema_is_served_or_said_to_be_unsupported() -> None:
    methods = {request["properties"]["method"]["enum"][0] for request in DEFINITIONS["ClientRequest"]["oneOf"]}
    assert methods - set(SUPPORTED) == KNOWN_UNSUPPORTED
    # what the TUI asks when it resumes a thread: refused plainly, not as an unknown name
    for method in ("thread/goal/get", "thread/backgroundTerminals/list", "experimentalFeature/list"):
        assert method_error(method).message == f"method `{method}` is not supported by Spindle"


async def test_account_read_tells_whether_the_providers_key_is_set_never_its_value(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"sk-test-{uuid.uuid4()}"
    monkeypatch.delenv("SPINDLE_TEST_KEY", raising=False)
    async with ws_server(make_config(provider={"env_key": "SPINDLE_TEST_KEY"})) as url, websocket_client(url) as client:
        replay = Replay(client)
        await replay.call("initialize", TUI_INITIALIZE, "initialize")
        none = {"account": None, "requiresOpenaiAuth": False, "userId": None, "workspaceRouting": None}
        assert await replay.call("account/read", {}, 1) == none  # the variable is not set
        monkeypatch.setenv("SPINDLE_TEST_KEY", secret)
        assert await replay.call("account/read", {"refreshToken": True}, 2) == {**none, "account": {"type": "apiKey"}}
        assert await replay.call("account/read", None, 3) == {**none, "account": {"type": "apiKey"}}
        monkeypatch.setenv("SPINDLE_TEST_KEY", "")
        assert await replay.call("account/read", {}, 4) == none  # empty is not set
        assert secret not in json.dumps(client.lines)


async def test_account_read_of_the_builtin_openai_provider(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent")
    async with ws_server(make_config(model_provider="openai")) as url, websocket_client(url) as client:
        await client.initialize()
        answer = await client.call("account/read", {})
        assert answer["account"] == {"type": "apiKey"} and answer["requiresOpenaiAuth"] is False
        assert "sk-never-sent" not in json.dumps(client.lines)


async def test_bedrock_check_is_experimental(runtime: ThreadManager) -> None:
    async with serving_ws(runtime) as url, websocket_client(url) as plain, websocket_client(url) as opted:
        await plain.initialize()
        with pytest.raises(RpcFailure, match="account/bedrock/checkGovCloudRequirements requires experimentalApi") as refused:
            await plain.call("account/bedrock/checkGovCloudRequirements", {})
        assert refused.value.code == -32600
        await opted.initialize(experimental=True)
        assert await opted.call("account/bedrock/checkGovCloudRequirements") == {"isGovCloud": False, "shouldWarn": False}


async def test_skills_hooks_and_plugins_are_empty_per_directory(tui_config: Config, server_cwd: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with ws_server(tui_config) as url, websocket_client(url) as client:
        replay = Replay(client)
        await replay.call("initialize", TUI_INITIALIZE, "initialize")
        skills = await replay.call("skills/list", {"cwds": [], "forceReload": False}, 1)
        assert skills == {"data": [{"cwd": str(server_cwd), "skills": [], "errors": []}]}  # none: the session cwd
        skills = await replay.call("skills/list", {"cwds": ["sub/../here", str(elsewhere)]}, 2)
        assert [entry["cwd"] for entry in skills["data"]] == [str(server_cwd / "here"), str(elsewhere)]
        hooks = await replay.call("hooks/list", None, 3)
        assert hooks == {"data": [{"cwd": str(server_cwd), "hooks": [], "warnings": [], "errors": []}]}
        thread = (await replay.call("thread/start", {"cwd": str(elsewhere)}, 4))["thread"]
        hooks = await replay.call("hooks/list", {"threadId": thread["id"]}, 5)
        assert [entry["cwd"] for entry in hooks["data"]] == [str(elsewhere)]  # the thread's
        with pytest.raises(RpcFailure, match="thread not found") as refused:
            await replay.call("hooks/list", {"threadId": str(uuid.uuid4())}, 6)
        assert refused.value.code == -32600
        plugins = await replay.call("plugin/installed", {"cwds": [str(elsewhere)], "installSuggestionPluginNames": ["x"]}, 7)
        assert plugins == {"marketplaces": [], "marketplaceLoadErrors": []}
        replay.check_notifications()


async def test_the_tuis_thread_config_draws_no_warning(runtime: ThreadManager) -> None:
    async with serving_ws(runtime) as url, websocket_client(url) as client:
        await client.initialize(experimental=True)
        await client.call("thread/start", {"ephemeral": True, "config": TITLE_THREAD_CONFIG, "threadSource": "thread_title"})
        await client.call("thread/start", {"config": {"clowd.skills.enabled": False}})
        warning = await client.wait_for("configWarning")
        assert "unknown config key `clowd`" in warning["params"]["summary"] and "cloud" in warning["params"]["summary"]
        assert len([n for n in client.notifications if n["method"] == "configWarning"]) == 1

