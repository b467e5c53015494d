"""What a command's sandbox allows, realised for one turn: pure data the executor turns into a
bubblewrap invocation. Paths are absolute; the executor resolves symlinks before binding them."""

from __future__ import annotations

import msgspec


class SandboxSpec(msgspec.Struct, kw_only=True, frozen=True):
    """The realised permissions of one turn's commands.

    `full_access`: no sandbox at all (`:danger-full-access`); the other fields are then unused.
    `writable_roots`: folders a command may write (the realised `:workspace_roots`, plus
    writable profile paths). `read_only_subpaths`: paths inside writable roots that stay read-only
    (`.git`, `.codex`, a profile's `read` entries). `denied_paths`: paths a command may not read.
    `network`: whether it may open network connections. `slash_tmp_writable`: a private, writable
    `/tmp` for the thread (else the host's, read-only). `tmpdir_writable`: `$TMPDIR` writable.
    """

    full_access: bool = False
    writable_roots: tuple[str, ...] = ()
    read_only_subpaths: tuple[str, ...] = ()
    denied_paths: tuple[str, ...] = ()
    network: bool = False
    slash_tmp_writable: bool = False
    tmpdir_writable: bool = False
