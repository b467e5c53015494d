"""Identifiers: UUIDv7 thread and turn ids (time-ordered, as Codex uses)."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def new_id() -> str:
    return str(uuid7())


def parse_thread_id(value: str) -> str:
    """The canonical form of a thread id; ValueError if it is not a UUID.

    Thread ids become parts of file names, so nothing that is not a UUID gets through.
    """
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"invalid thread id {value!r}: expected a UUID") from None
