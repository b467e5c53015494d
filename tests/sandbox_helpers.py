"""Running commands in the real sandbox from tests, and the skip when bubblewrap cannot run."""

from __future__ import annotations

import os
import shutil

import pytest

from spindle.actors.runtime import sandbox
from spindle.actors.runtime.execution import ExecResult, run_process
from spindle.protocol.sandbox import SandboxSpec


def _bwrap_problem() -> str | None:
    bwrap = sandbox.find_bwrap([])
    if bwrap is None:
        return "no `bwrap` on PATH"
    return sandbox._probe(bwrap)


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(
    BWRAP_PROBLEM is not None,
    reason=f"bubblewrap cannot sandbox on this machine ({BWRAP_PROBLEM}); CI installs it (.ci/run)",
)


async def sh(
    spec: SandboxSpec, script: str, cwd: str, *, thread_id: str = "t-test", timeout_s: float | None = 30.0,
    path: str | None = None,
) -> ExecResult:
    """Run `script` with `sh -c` in `cwd` under `spec`."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    command = [shutil.which("sh") or "/bin/sh", "-c", script]
    ready = await sandbox.plan(spec, cwd=cwd, command=command, env=env, thread_id=thread_id, path=path)
    return await run_process(ready, cwd=cwd, env=env, timeout_s=timeout_s)


def out(result: ExecResult) -> str:
    return result.output.text()


def workspace(root: str) -> SandboxSpec:
    """`:workspace` on `root`: it writable, its `.git` and `.codex` read-only, a private /tmp."""
    return SandboxSpec(
        writable_roots=(root,),
        read_only_subpaths=(os.path.join(root, ".git"), os.path.join(root, ".codex")),
        slash_tmp_writable=True,
        tmpdir_writable=True,
    )
