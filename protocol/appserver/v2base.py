"""The two bases of every app-server v2 struct (re-exported by `v2`)."""

from __future__ import annotations

import msgspec


class Wire(msgspec.Struct, kw_only=True, rename="camel"):
    """Base of every v2 object: camelCase names, explicit nulls kept."""


class Inbound(msgspec.Struct, kw_only=True, rename="camel", frozen=True):
    """Base of every params struct."""
