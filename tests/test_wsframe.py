"""The proxy's WebSocket client codec (protocol/appserver/wsframe.py), without an event loop:
frames of every length form, masking, fragments with control frames between them, the close
payload, the protocol errors a server can make, and the upgrade handshake."""

from __future__ import annotations

import struct

import pytest

from spindle.protocol.appserver import wsframe as ws


def server_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    return ws.encode_frame(opcode, payload, fin=fin, mask=b"")


def events(reader: ws.FrameReader) -> list[ws.Event]:
    found = []
    while (event := reader.next_event()) is not None:
        found.append(event)
    return found


def test_the_accept_key_is_rfc_6455s_example() -> None:
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(("size", "header"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (3 * 1024 * 1024, 10)])
def test_each_length_form_round_trips(size: int, header: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = server_frame(ws.TEXT, payload)
    assert len(frame) == header + size and frame[0] == 0x81
    reader = ws.FrameReader()
    reader.receive_data(frame)
    assert events(reader) == [ws.Message(ws.TEXT, payload)]


def test_a_frame_read_a_byte_at_a_time_comes_out_once_whole() -> None:
    frame = server_frame(ws.TEXT, b'{"id":1,"result":{}}' * 20)  # 400 bytes: a 16-bit length
    reader = ws.FrameReader()
    for index in range(len(frame) - 1):
        reader.receive_data(frame[index:index + 1])
        assert reader.next_event() is None
    reader.receive_data(frame[-1:])
    assert reader.next_event() == ws.Message(ws.TEXT, b'{"id":1,"result":{}}' * 20)
    assert reader.next_event() is None


def test_client_frames_are_masked_with_a_fresh_key() -> None:
    payload = b'{"id":1,"method":"initialize"}' * 10
    frame = ws.encode_frame(ws.TEXT, payload, mask=b"\x01\x02\x03\x04")
    assert frame[1] == 0x80 | 126 and struct.unpack("!H", frame[2:4]) == (len(payload),)
    assert frame[4:8] == b"\x01\x02\x03\x04" and frame[8:] != payload
    assert ws.mask_bytes(frame[8:], b"\x01\x02\x03\x04") == payload
    server = ws.FrameReader(expect_masked=True)  # a server's reader unmasks
    server.receive_data(frame)
    assert events(server) == [ws.Message(ws.TEXT, payload)]
    first, second = ws.encode_frame(ws.TEXT, b"x"), ws.encode_frame(ws.TEXT, b"x")
    assert first[1] & 0x80 and len(first) == 2 + 4 + 1
    assert first[2:6] != second[2:6]  # os.urandom: two equal keys would be a 1-in-4-billion event


def test_a_fragmented_message_is_joined_around_control_frames() -> None:
    reader = ws.FrameReader()
    reader.receive_data(
        server_frame(ws.TEXT, b'{"id":1,', fin=False)
        + server_frame(ws.PING, b"are you there")
        + server_frame(ws.CONTINUATION, b'"result"', fin=False)
        + server_frame(ws.PONG, b"")
        + server_frame(ws.CONTINUATION, b":{}}")
        + server_frame(ws.TEXT, b"next")
    )
    assert events(reader) == [
        ws.Ping(b"are you there"), ws.Pong(b""), ws.Message(ws.TEXT, b'{"id":1,"result":{}}'), ws.Message(ws.TEXT, b"next"),
    ]


def test_fragments_past_the_message_limit_are_refused_with_1009() -> None:
    reader = ws.FrameReader(max_message_bytes=10)
    reader.receive_data(server_frame(ws.TEXT, b"123456", fin=False) + server_frame(ws.CONTINUATION, b"78901"))
    with pytest.raises(ws.WebSocketError) as refused:
        events(reader)
    assert refused.value.code == ws.MESSAGE_TOO_BIG


def test_close_frames_carry_a_code_and_a_reason() -> None:
    reader = ws.FrameReader()
    reader.receive_data(server_frame(ws.CLOSE, ws.close_payload(ws.GOING_AWAY, "server stopping")) + server_frame(ws.CLOSE))
    assert events(reader) == [ws.Close(1001, "server stopping"), ws.Close(ws.NO_STATUS, "")]
    assert len(ws.close_payload(1000, "x" * 500)) == 125  # a control frame's payload limit


@pytest.mark.parametrize(("frame", "why"), [
    (ws.encode_frame(ws.TEXT, b"hi", mask=b"abcd"), "masked frame from the server"),
    (bytes([0xC1, 0x00]), "reserved bit"),
    (bytes([0x83, 0x00]), "unknown opcode"),
    (server_frame(ws.PING, b"x" * 126), "control frame"),
    (server_frame(ws.PING, b"x", fin=False), "control frame"),
    (server_frame(ws.CONTINUATION, b"x"), "no message to continue"),
    (server_frame(ws.TEXT, b"a", fin=False) + server_frame(ws.TEXT, b"b"), "new message began"),
    (server_frame(ws.CLOSE, b"\x03"), "one-byte payload"),
])
def test_what_a_server_may_not_send(frame: bytes, why: str) -> None:
    reader = ws.FrameReader()
    reader.receive_data(frame)
    with pytest.raises(ws.WebSocketError, match=why) as refused:
        events(reader)
    assert refused.value.code == ws.PROTOCOL_ERROR


def reply_to(handshake: ws.Handshake, *, accept: bytes | None = None, extra: bytes = b"") -> bytes:
    key = accept if accept is not None else ws.accept_key(handshake.key)
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + key + b"\r\nX-Codex-Websocket-Max-Unfragmented-Message-Bytes: 16777216\r\n\r\n" + extra)


def test_the_upgrade_completes_and_keeps_the_frames_that_came_with_it() -> None:
    handshake = ws.Handshake()
    request = handshake.request().decode()
    assert request.startswith("GET /rpc HTTP/1.1\r\nHost: localhost\r\n") and request.endswith("\r\n\r\n")
    assert f"Sec-WebSocket-Key: {handshake.key.decode()}\r\n" in request and "Sec-WebSocket-Version: 13\r\n" in request
    reply = reply_to(handshake, extra=server_frame(ws.TEXT, b"early"))
    assert not handshake.receive_data(reply[:20])
    assert handshake.receive_data(reply[20:]) and handshake.done
    assert handshake.headers["x-codex-websocket-max-unfragmented-message-bytes"] == "16777216"
    reader = ws.FrameReader()
    reader.receive_data(handshake.rest)
    assert events(reader) == [ws.Message(ws.TEXT, b"early")]


def test_a_refused_or_forged_upgrade_is_an_error() -> None:
    with pytest.raises(ws.WebSocketError, match="refused the WebSocket upgrade: HTTP/1.1 503 Service Unavailable: server full"):
        ws.Handshake().receive_data(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 11\r\n\r\nserver full")
    with pytest.raises(ws.WebSocketError, match="wrong Sec-WebSocket-Accept"):
        handshake = ws.Handshake()
        handshake.receive_data(reply_to(handshake, accept=b"forged"))
    with pytest.raises(ws.WebSocketError, match="closed the connection before answering"):
        ws.Handshake().receive_data(b"")
    with pytest.raises(ws.WebSocketError, match="not HTTP"):
        ws.Handshake().receive_data(b"x" * (ws.MAX_HEAD_BYTES + 1))
