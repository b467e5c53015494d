"""The listeners' sans-IO rules: the `--listen` URL forms, who may listen beyond loopback, and the
HTTP gate in front of every WebSocket (no event loop)."""

from __future__ import annotations

import pytest

from spindle.protocol.appserver.listen import (
    HttpReply,
    ListenUrlError,
    StdioListen,
    UnixListen,
    Upgrade,
    WebSocketListen,
    check_exposure,
    gate,
    parse_listen,
)


def test_listen_urls_take_codex_forms() -> None:
    assert parse_listen("stdio://") == StdioListen()
    assert parse_listen("ws://127.0.0.1:4500") == WebSocketListen("127.0.0.1", 4500)
    assert parse_listen("ws://[::1]:0") == WebSocketListen("::1", 0)
    assert parse_listen("ws://localhost:7/") == WebSocketListen("127.0.0.1", 7)
    assert parse_listen("unix://") == UnixListen(None)
    assert parse_listen("unix:///run/s.sock") == UnixListen("/run/s.sock")
    for url, says in [
        ("ws://127.0.0.1", "name the port"), ("wss://127.0.0.1:1", "no TLS"), ("http://127.0.0.1:1", "not a listener URL"),
        ("ws://example.com:1", "must be an IP address"), ("ws://127.0.0.1:1/rpc", "nothing after the port"),
    ]:
        with pytest.raises(ListenUrlError, match=says):
            parse_listen(url)


def test_a_non_loopback_listener_needs_a_token() -> None:
    check_exposure([WebSocketListen("127.0.0.1", 1), WebSocketListen("::1", 2), UnixListen()], token=None)
    check_exposure([WebSocketListen("0.0.0.0", 1)], token=b"secret")
    with pytest.raises(ListenUrlError, match="not a loopback address.*--ws-auth capability-token --ws-token-file"):
        check_exposure([WebSocketListen("0.0.0.0", 1)], token=None)


UPGRADE = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"k")]


def test_the_gate_answers_before_any_websocket() -> None:
    def verdict(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], token: bytes | None = None, room: bool = True) -> object:
        return gate(method, target, headers, token=token, room=room)

    assert verdict(b"GET", b"/readyz", []) == verdict(b"GET", b"/healthz", []) == HttpReply(200)
    assert verdict(b"GET", b"/rpc", UPGRADE) == verdict(b"GET", b"/", UPGRADE) == Upgrade()
    origin = [(b"origin", b"http://evil.example")]
    assert verdict(b"GET", b"/readyz", origin).status == 403  # type: ignore[attr-defined]
    assert verdict(b"GET", b"/rpc", UPGRADE + origin).status == 403  # type: ignore[attr-defined]
    assert verdict(b"GET", b"/rpc", []).status == 400  # type: ignore[attr-defined]
    assert verdict(b"POST", b"/rpc", UPGRADE).status == 405  # type: ignore[attr-defined]
    assert verdict(b"GET", b"/rpc", UPGRADE, room=False).status == 503  # type: ignore[attr-defined]
    bearer = [(b"authorization", b"Bearer s3cret")]
    assert verdict(b"GET", b"/rpc", UPGRADE + bearer, token=b"s3cret") == Upgrade()
    for headers in ([], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"Basic s3cret")]):
        assert verdict(b"GET", b"/rpc", UPGRADE + headers, token=b"s3cret").status == 401  # type: ignore[attr-defined]
    assert verdict(b"GET", b"/rpc?token=s3cret", UPGRADE, token=b"s3cret").status == 401  # type: ignore[attr-defined]
