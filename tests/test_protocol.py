"""Protocol types decode the codex-rs wire shapes, and bad input gets errors naming the problem."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from spindle.actors.runtime.config import ConfigError, load_config
from spindle.protocol.events import Event, TaskStartedEvent
from spindle.protocol.ids import parse_thread_id, uuid7
from spindle.protocol.items import FunctionCall, Message, OutputText, ResponseItem
from spindle.protocol.ops import Op, Submission, ThreadRollbackOp, UserInputOp, UserTurnOp
from spindle.protocol.settings import SettingsUpdate

encode = msgspec.json.encode


def decode_op(raw: bytes) -> Op:
    return msgspec.json.decode(raw, type=Op)  # type: ignore[no-any-return]


ALL_OP_TAGS = [
    "user_input", "user_turn", "override_turn_context", "interrupt", "shutdown", "compact",
    "thread_rollback", "exec_approval", "patch_approval", "dynamic_tool_response", "request_permissions_response",
    "run_user_shell_command", "set_thread_memory_mode", "refresh_mcp_servers", "reload_user_config", "user_input_answer",
    "review",
]


def test_every_op_tag_is_known() -> None:
    tags = [cls.__struct_config__.tag for cls in Op.__args__]  # type: ignore[attr-defined]
    assert sorted(tags) == sorted(ALL_OP_TAGS)


def test_submission_round_trip() -> None:
    raw = b'{"id":"7","op":{"type":"user_turn","items":[{"type":"text","text":"hi"}],"settings":{"model":"m","sandbox_mode":"read-only"}}}'
    sub = msgspec.json.decode(raw, type=Submission)
    assert sub.id == "7" and isinstance(sub.op, UserTurnOp)
    assert sub.op.settings == SettingsUpdate(model="m", sandbox_mode="read-only")
    assert msgspec.json.decode(encode(sub), type=Submission) == sub


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"type":"fly_to_moon"}', "Invalid value 'fly_to_moon' - at `$.type`"),
        (b'{"type":"thread_rollback","num_turns":"two"}', "Expected `int`, got `str` - at `$.num_turns`"),
        (b'{"type":"thread_rollback","num_turns":-1}', "at `$.num_turns`"),
        (b'{"type":"user_input","items":[{"type":"video"}]}', "at `$.items[0].type`"),
        (b'{"type":"user_input"}', "missing required field `items`"),
        (b'{"type":', "truncated"),
    ],
)
def test_bad_ops_name_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        decode_op(raw)
    assert message in str(info.value)


def test_rollback_zero_decodes_so_the_actor_can_reject_it() -> None:
    assert decode_op(b'{"type":"thread_rollback","num_turns":0}') == ThreadRollbackOp(num_turns=0)


def test_event_wire_shape() -> None:
    ev = Event(id="1", msg=TaskStartedEvent(turn_id="t"))
    assert msgspec.json.decode(encode(ev)) == {"id": "1", "msg": {"type": "task_started", "turn_id": "t"}}
    assert msgspec.json.decode(encode(ev), type=Event) == ev


def test_response_items_match_the_reference_rollout_shapes() -> None:
    line = b'{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello.","annotations":[]}]}'
    item = msgspec.json.decode(line, type=ResponseItem)
    assert isinstance(item, Message) and item.content == [OutputText(text="Hello.")]
    call = msgspec.json.decode(
        b'{"type":"function_call","id":"fc","name":"exec_command","arguments":"{}","call_id":"c","status":"completed"}',
        type=ResponseItem,
    )
    assert isinstance(call, FunctionCall) and call.call_id == "c"
    assert msgspec.json.decode(encode(call)) == msgspec.json.decode(
        b'{"type":"function_call","name":"exec_command","arguments":"{}","call_id":"c","id":"fc","status":"completed"}'
    )


def test_user_input_op_default_round_trip() -> None:
    op = decode_op(b'{"type":"user_input","items":[{"type":"local_image","path":"/x.png"}]}')
    assert isinstance(op, UserInputOp)


def test_thread_ids() -> None:
    a, b = uuid7(), uuid7()
    assert a.version == b.version == 7
    assert a.int >> 80 <= b.int >> 80  # the millisecond prefix orders ids by creation
    assert parse_thread_id(str(a).upper()) == str(a)
    for bad in ["../../etc/passwd", "", "abc", "0" * 36]:
        with pytest.raises(ValueError, match="invalid thread id"):
            parse_thread_id(bad)


def test_config_errors_name_file_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('model = 5\n')
    with pytest.raises(ConfigError, match=r"config.toml: key 'model': Expected `str`, got `int`"):
        load_config(tmp_path)
    path.write_text('approval_policy = "sometimes"\n')
    with pytest.raises(ConfigError, match="key 'approval_policy'"):
        load_config(tmp_path)
    path.write_text('model_provider = "mystery"\n')
    with pytest.raises(ConfigError, match=r"unknown model provider 'mystery'.*known: openai"):
        load_config(tmp_path)
    path.write_text("model = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_config_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'model = "m1"\nmodel_provider = "local"\n'
        '[model_providers.local]\nname = "Local"\nbase_url = "http://127.0.0.1:1/v1"\nwire_api = "responses"\n'
        'request_max_retries = 2\nstream_max_retries = 3\n'
    )
    config = load_config(tmp_path, ["model=m2", "model_providers.local.request_max_retries=7", "sandbox_mode=danger-full-access"])
    assert config.model == "m2" and config.sandbox_mode == "danger-full-access"
    local = config.provider()
    assert (local.request_max_retries, local.stream_max_retries) == (7, 3)
    assert config.provider("openai").env_key == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(tmp_path, ["nonsense"])
