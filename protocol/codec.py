"""Encoders and decoders, built once; decode errors name what was wrong and where."""

from __future__ import annotations

import msgspec

from .events import Event
from .items import ResponseItem
from .ops import Op, Submission


class DecodeError(ValueError):
    """Input that does not decode; the message names the field and what was expected."""


_op_decoder = msgspec.json.Decoder(Op)
_submission_decoder = msgspec.json.Decoder(Submission)
_event_decoder = msgspec.json.Decoder(Event)
_item_decoder = msgspec.json.Decoder(ResponseItem)
encoder = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder, data: bytes | str, what: str):  # type: ignore[no-untyped-def]
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.startswith("Invalid value") and text.endswith("at `$.type`"):
            kind = text.split("'")[1] if "'" in text else text
            raise DecodeError(f"unknown {what} type {kind!r}") from None
        raise DecodeError(f"invalid {what}: {text}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"malformed {what} JSON: {exc}") from None


def decode_op(data: bytes | str) -> Op:
    return _decode(_op_decoder, data, "op")  # type: ignore[no-any-return]


def decode_submission(data: bytes | str) -> Submission:
    return _decode(_submission_decoder, data, "submission")  # type: ignore[no-any-return]


def decode_event(data: bytes | str) -> Event:
    return _decode(_event_decoder, data, "event")  # type: ignore[no-any-return]


def decode_response_item(data: bytes | str) -> ResponseItem:
    return _decode(_item_decoder, data, "response item")  # type: ignore[no-any-return]


def encode(value: object) -> bytes:
    return encoder.encode(value)
