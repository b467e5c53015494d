"""A thread's permissions, realised for a turn as a `SandboxSpec`.

Today from the legacy `sandbox_mode` alone: `read-only` writes nothing; `workspace-write` writes
the thread's cwd (its `.git` and `.codex` read-only) and a private `/tmp`; `danger-full-access` is
no sandbox. Permission profiles by id extend this (`realise`)."""

from __future__ import annotations

import os

from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import ThreadSettings

PROTECTED_NAMES = (".git", ".codex")
"""Inside a writable root, these stay read-only: a repository's metadata and its Codex config."""


def realise(settings: ThreadSettings) -> SandboxSpec:
    """The sandbox a command of a turn with `settings` runs in."""
    match settings.sandbox_mode:
        case "danger-full-access":
            return SandboxSpec(full_access=True, network=True)
        case "workspace-write":
            roots = (os.path.abspath(settings.cwd),)
            return SandboxSpec(
                writable_roots=roots,
                read_only_subpaths=tuple(os.path.join(root, name) for root in roots for name in PROTECTED_NAMES),
                slash_tmp_writable=True,
                tmpdir_writable=True,
            )
    return SandboxSpec()
