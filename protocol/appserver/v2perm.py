"""App-server v2 wire types of `permissionProfile/list` (the profiles a thread may select by id)."""

from __future__ import annotations

from .v2 import Inbound, Wire


class PermissionProfileListParams(Inbound, kw_only=True, frozen=True):
    cursor: str | None = None
    limit: int | None = None
    cwd: str | None = None


class PermissionProfileSummary(Wire, kw_only=True):
    id: str
    description: str | None = None
    allowed: bool = True


class PermissionProfileListResult(Wire, kw_only=True):
    data: list[PermissionProfileSummary]
    next_cursor: str | None = None
