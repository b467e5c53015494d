"""`apply_patch`: the tool the model edits files with, in Codex's patch envelope (`patch.py`).

Offered as Codex offers it: a freeform tool with a Lark grammar to GPT-5 and Codex models (the
model answers with a `custom_tool_call`), a JSON function tool (`{"input": patch}`) to gpt-oss
models, and not at all to other models unless the tool is made with a fixed `form`.

A call is a `FileChange` item: started, then completed, declined or failed. The patch is parsed
and planned against the files as they are (off the event loop); a bad patch or a hunk that does
not match fails the call, and the model reads why. Every file it touches must lie inside the
turn's writable roots and outside their protected paths (`.git`, `.codex`, a profile's `read`
and `deny` paths), judged on real paths, so neither `..` nor a symlink leads out; under
`danger-full-access` anything goes. Whether it applies at once, asks the user
(`apply_patch_approval_request`) or is refused follows the approval policy: `untrusted` always
asks; `on-request`, `on-failure` and a granular policy ask only for a file outside the writable roots;
`never`, and a granular policy with `sandbox_approval = false`, refuse that. The writes are atomic: every new content is written beside its file first, then all
are moved into place; if one step fails, the files moved so far are put back.

The writes are made by the server itself, not by a sandboxed process: the path checks above are
what confine them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import trio

from spindle.protocol.events import (
    AddChange,
    ApplyPatchApprovalRequestEvent,
    DeleteChange,
    FileChange,
    UpdateChange,
)
from spindle.protocol.items import FileChangeItem, PatchChange
from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import Granular

from .approvals import InProcess
from .patch import FileChange as PlannedChange
from .patch import Hunk, PatchError, UpdateFile, parse, plan, resolve, summary
from .tools import ToolContext
from .turn_diff import display_root, render

Form = Literal["auto", "freeform", "function"]
MAX_FILE_BYTES = 16 * 1024 * 1024
"""The largest file a patch may change (it is read whole)."""

GRAMMAR = r"""
start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?

hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change_move? change?

filename: /(.+)/
add_line: "+" /(.*)/ LF -> line

change_move: "*** Move to: " filename LF
change: (change_context | change_line)+ eof_line?
change_context: ("@@" | "@@ " /(.+)/) LF
change_line: ("+" | "-" | " ") /(.*)/ LF
eof_line: "*** End of File" LF

%import common.LF
"""

FUNCTION_DESCRIPTION = (
    "Edit files with a patch. `input` is the whole patch: '*** Begin Patch', then one or more of "
    "'*** Add File: <path>' (every line of the new file prefixed with '+'), '*** Delete File: <path>', "
    "'*** Update File: <path>' (optionally '*** Move to: <new path>') followed by hunks, each starting with "
    "'@@' or '@@ <a line to find first>' and made of ' ' context, '-' removed and '+' added lines, with 3 "
    "lines of context around each change; then '*** End Patch'. Paths are relative to the working directory."
)


class ApplyPatchTool:
    name = "apply_patch"

    def __init__(self, *, form: Form = "auto") -> None:
        self.form = form

    def spec(self) -> dict[str, Any]:
        return self._spec("function" if self.form == "function" else "freeform")

    def spec_for(self, model: str) -> dict[str, Any] | None:
        if self.form != "auto":
            return self._spec(self.form)
        if model.startswith(("gpt-5", "codex")):
            return self._spec("freeform")
        if model.startswith("gpt-oss"):
            return self._spec("function")
        return None

    def _spec(self, form: Literal["freeform", "function"]) -> dict[str, Any]:
        if form == "freeform":
            return {
                "type": "custom", "name": self.name,
                "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool, so do not wrap the patch in JSON.",
                "format": {"type": "grammar", "syntax": "lark", "definition": GRAMMAR},
            }
        return {
            "type": "function", "name": self.name, "description": FUNCTION_DESCRIPTION, "strict": False,
            "parameters": {"type": "object", "properties": {"input": {"type": "string"}},
                           "required": ["input"], "additionalProperties": False},
        }

    async def run(self, arguments: str, ctx: ToolContext) -> str:
        began = time.monotonic()
        item = FileChangeItem(id=ctx.call_id, changes=[], status="inProgress")
        if ctx.sandbox is None:
            return _ended(ctx, item, "failed", f"apply_patch failed: {ctx.sandbox_error}")
        spec, cwd, policy = ctx.sandbox, ctx.settings.cwd, ctx.settings.approval_policy
        try:
            hunks = parse(_patch_text(arguments))
            outside = await trio.to_thread.run_sync(paths_outside, spec, targets(hunks, cwd))
            if outside and (policy == "never" or isinstance(policy, Granular) and policy.rejects_sandbox_prompts()):
                return _ended(ctx, item, "declined", f"apply_patch refused: {', '.join(outside)} may not be written "
                              "in this sandbox, and the approval policy asks no one about it")  # before any file is read
            changes = await trio.to_thread.run_sync(checked_plan, hunks, cwd)
        except PatchError as exc:
            return _ended(ctx, item, "failed", f"apply_patch verification failed: {exc}")
        item = msgspec.structs.replace(item, changes=[
            PatchChange(path=c.path, kind=c.kind, diff=c.diff, move_path=c.move_path) for c in changes])
        ctx.item_started(item)
        status: Literal["completed", "failed", "declined"] = "failed"
        try:
            if outside or policy == "untrusted":
                reason = f"write outside the writable roots: {', '.join(outside)}" if outside else None
                request = ApplyPatchApprovalRequestEvent(
                    call_id=ctx.call_id, turn_id=ctx.turn_id, changes=_request_changes(changes), reason=reason)
                changed = ("patch", tuple((c.kind, c.path, c.move_path) for c in changes))
                key = InProcess(changed) if outside else changed  # writing outside is not carried across a restart
                if await ctx.ask_approval(request, key) not in ("approved", "approved_for_session"):
                    status = "declined"
                    return "patch rejected by user"
            try:
                written = await trio.to_thread.run_sync(commit, hunks, cwd, spec, changes, outside)
            except PatchError as exc:
                return f"apply_patch failed: nothing was changed: {exc}"
            except OSError as exc:
                return f"apply_patch failed: nothing was changed: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
            ctx.turn_diff.record(written)
            status = "completed"
        finally:  # an interrupt while the user is asked, too: the item always ends
            ctx.item_completed(msgspec.structs.replace(item, status=status))
        await _announce_diff(ctx)
        wall = time.monotonic() - began
        return f"Exit code: 0\nWall time: {wall:.0f} seconds\nOutput:\n{summary(changes, cwd)}"


def targets(hunks: Sequence[Hunk], cwd: str) -> list[str]:
    """Every file `hunks` would write (a move's destination too), made absolute."""
    paths = [resolve(cwd, hunk.path) for hunk in hunks]
    return paths + [resolve(cwd, hunk.move_to) for hunk in hunks if isinstance(hunk, UpdateFile) and hunk.move_to]


async def _announce_diff(ctx: ToolContext) -> None:
    """Tell the turn's net diff, made in a worker thread (it diffs whole files; only those the
    last patch changed are diffed again)."""
    turn_diff = ctx.turn_diff
    if turn_diff.root is None:
        turn_diff.root = await trio.to_thread.run_sync(display_root, ctx.settings.cwd)
    # abandoned on an interrupt (it only reads its snapshot): a long diff never holds the turn up
    diff = await trio.to_thread.run_sync(render, turn_diff.snapshot(), turn_diff.root, turn_diff.sections,
                                         abandon_on_cancel=True)  # type: ignore[call-arg]  # trio-typing predates it
    ctx.diff_updated(diff)


def checked_plan(hunks: Sequence[Hunk], cwd: str) -> list[PlannedChange]:
    """The change set, read from regular files only; a folder is never a patch's target. Blocking."""
    changes = plan(hunks, cwd, _read)
    for path in [p for c in changes for p in (c.path, c.move_path) if p is not None]:
        if os.path.isdir(path):
            raise PatchError(f"'{path}' is a folder: a patch writes files")
    return changes


def commit(hunks: Sequence[Hunk], cwd: str, spec: SandboxSpec, approved: Sequence[PlannedChange],
           outside: Sequence[str]) -> list[PlannedChange]:
    """Apply `hunks` as approved: planned again from the files as they are now, which must be
    what the user was shown, and where no path has come to lead anywhere else. The changes as
    applied, with the texts they replaced. Blocking."""
    fresh = checked_plan(hunks, cwd)
    if [_before(c) for c in fresh] != [_before(c) for c in approved]:
        raise PatchError("a file changed while the patch waited for approval")
    written = [p for c in fresh for p in (c.path, c.move_path) if p is not None]
    moved_out = sorted(set(paths_outside(spec, written)) - set(outside))
    if moved_out:
        raise PatchError(f"{', '.join(moved_out)} now lead(s) outside the writable roots")
    apply_atomically([_through_link(change) for change in fresh])
    return fresh


def _before(change: PlannedChange) -> tuple[str, str | None, str | None]:
    """What a change's files held when it was planned."""
    return change.path, change.original, change.replaced


def _through_link(change: PlannedChange) -> PlannedChange:
    """An update of a symlink changes the file it points to (checked above), and keeps the link."""
    if change.kind == "update" and change.move_path is None and os.path.islink(change.path):
        return dataclasses.replace(change, path=os.path.realpath(change.path))
    return change


def _patch_text(arguments: str) -> str:
    """The patch: a freeform call's input as it is, a function call's `input` field."""
    stripped = arguments.lstrip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("input"), str):
            return value["input"]
    return arguments


def _read(path: str) -> str:
    """A regular file's text, line endings kept; never a device, a FIFO or a huge file (their
    reads could block or never end)."""
    fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(errno.EFBIG, f"over {MAX_FILE_BYTES} bytes", path)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8")


def _ended(ctx: ToolContext, item: FileChangeItem, status: Literal["failed", "declined"], answer: str) -> str:
    ctx.item_started(item)
    ctx.item_completed(msgspec.structs.replace(item, status=status))
    return answer


def _request_changes(changes: Sequence[PlannedChange]) -> dict[str, FileChange]:
    out: dict[str, FileChange] = {}
    for change in changes:
        match change.kind:
            case "add":
                out[change.path] = AddChange(content=change.content or "")
            case "delete":
                out[change.path] = DeleteChange(content=change.diff)
            case "update":
                out[change.path] = UpdateChange(unified_diff=change.diff, move_path=change.move_path)
    return out


def paths_outside(spec: SandboxSpec, paths: Sequence[str]) -> list[str]:
    """The files of `paths` that `spec` does not let a command write (on real paths: the
    deepest existing folder of each is resolved). Blocking: call it in a thread."""
    if spec.full_access:
        return []
    roots = [os.path.realpath(root) for root in spec.writable_roots]
    closed = [os.path.realpath(path) for path in (*spec.read_only_subpaths, *spec.denied_paths)]
    outside = []
    for path in paths:
        real = _real(path)
        if not any(_within(real, root) for root in roots) or any(_within(real, shut) for shut in closed):
            outside.append(path)
    return outside


def _real(path: str) -> str:
    """`path` with its deepest existing ancestor resolved (the file itself may not exist yet)."""
    head, tail = path, ""
    while not os.path.lexists(head) and os.path.dirname(head) != head:
        head, name = os.path.split(head)
        tail = os.path.join(name, tail) if tail else name
    real = os.path.realpath(head)
    return os.path.join(real, tail) if tail else real


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def apply_atomically(changes: Sequence[PlannedChange]) -> None:
    """Write every change, or none: new contents are staged beside their files, then all are
    moved into place; on a failure the files already moved are restored. Blocking."""
    staged: list[tuple[str | None, str]] = []  # (staged new content, destination)
    try:
        for change in changes:
            target = change.move_path or change.path
            if change.content is None:
                staged.append((None, change.path))
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".apply_patch-")
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(change.content)
            with contextlib.suppress(OSError):
                os.chmod(temp, os.stat(change.path).st_mode & 0o7777 if os.path.exists(change.path) else 0o644)
            staged.append((temp, target))
    except BaseException:
        _discard(staged)
        raise
    _commit(changes, staged)


def _discard(staged: list[tuple[str | None, str]]) -> None:
    for temp, _ in staged:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _commit(changes: Sequence[PlannedChange], staged: list[tuple[str | None, str]]) -> None:
    backups: list[tuple[str, str | None]] = []  # (path, its former content kept aside, or None if new)
    try:
        for change, (temp, target) in zip(changes, staged, strict=True):
            for path in dict.fromkeys((change.path, target)):
                backups.append((path, _set_aside(path)))
            if temp is not None:
                os.replace(temp, target)
    except BaseException:
        for path, aside in reversed(backups):
            with contextlib.suppress(OSError):
                if aside is not None:
                    os.replace(aside, path)
                elif os.path.lexists(path):
                    os.unlink(path)
        _discard(staged)
        raise
    for _, aside in backups:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.unlink(aside)


def _set_aside(path: str) -> str | None:
    """Move `path` (if it exists) to a hidden name beside it; that name, to restore it from."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path) and not os.path.islink(path):
        raise OSError(errno.EISDIR, "is a folder", path)
    aside = os.path.join(os.path.dirname(path), f".apply_patch-old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, aside)
    return aside
