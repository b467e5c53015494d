"""Opaque page cursors, one codec for every listing (threads, turns, items).

A cursor is a short tuple of strings, numbers and flags, JSON-encoded and then base64url'd without
padding: clients pass it back as it is, and a cursor that does not decode to the shape its listing
expects is an `InvalidCursor`. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class InvalidCursor(ValueError):
    """A cursor that is not one this listing made."""


def encode_cursor(*parts: str | int | bool) -> str:
    raw = msgspec.json.encode(parts)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, shape: Any) -> Any:
    """The parts of `cursor` as `shape` (a tuple type); InvalidCursor if it is not that."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=shape)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
