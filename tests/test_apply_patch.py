"""apply_patch as the model calls it: the forms it is offered in, edits inside the writable roots,
atomic failure, the approval policy for files outside, and the fileChange item on the wire."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import apply_patch_tool
from spindle.actors.runtime.apply_patch_tool import ApplyPatchTool
from spindle.actors.runtime.tools import ToolContext, ToolRegistry
from spindle.actors.testing.mock_model import Call, Custom, MockModel, Text
from spindle.protocol.events import (
    ApplyPatchApprovalRequestEvent,
    ApprovalRequestEvent,
    UpdateChange,
)
from spindle.protocol.items import FileChangeItem, TurnItem
from spindle.protocol.sandbox import SandboxSpec
from spindle.protocol.settings import ApprovalPolicy, ReviewDecision, ThreadSettings

from .helpers import app_client

ZERO = "0" * 40
"""The object id Codex's turn diff gives a file that is not there."""


def blob_id(text: str) -> str:
    """The git blob id of `text`."""
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def oid(*lines: str) -> str:
    """The git blob id of a text of `lines` (each ended by a newline)."""
    return blob_id("".join(line + "\n" for line in lines))


def envelope(*body: str) -> str:
    return "\n".join(("*** Begin Patch", *body, "*** End Patch")) + "\n"


class Recorder:
    """A ToolContext whose items and approval requests are recorded; approvals get `decision`."""

    def __init__(self, cwd: Path, *, sandbox: SandboxSpec, approval: ApprovalPolicy = "on-request") -> None:
        self.items: list[tuple[str, FileChangeItem]] = []
        self.asked: list[ApprovalRequestEvent] = []
        self.decision: ReviewDecision = "denied"
        self.diffs: list[str] = []
        """The turn's net diff, each time it is announced."""
        settings = ThreadSettings(model="m", provider_id="p", cwd=str(cwd), approval_policy=approval,
                                  sandbox_mode="workspace-write", instructions="")
        self.ctx = ToolContext(
            thread_id="t", turn_id="turn", call_id="call_1", settings=settings, sandbox=sandbox,
            ask_approval=self._ask, item_started=lambda i: self._item("started", i),
            item_completed=lambda i: self._item("completed", i), diff_updated=self.diffs.append,
        )

    async def _ask(self, request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        self.asked.append(request)
        return self.decision

    def _item(self, phase: str, item: TurnItem) -> None:
        assert isinstance(item, FileChangeItem)
        self.items.append((phase, item))

    @property
    def final(self) -> FileChangeItem:
        return self.items[-1][1]


def roots(path: Path) -> SandboxSpec:
    return SandboxSpec(writable_roots=(str(path),), read_only_subpaths=(str(path / ".git"),))


def test_it_is_offered_freeform_to_gpt5_as_a_function_to_gpt_oss_and_not_to_others() -> None:
    tool = ApplyPatchTool()
    freeform = tool.spec_for("gpt-5.5")
    assert freeform is not None and freeform["type"] == "custom" and freeform["format"]["syntax"] == "lark"
    function = tool.spec_for("gpt-oss-120b")
    assert function is not None and function["type"] == "function" and function["parameters"]["required"] == ["input"]
    assert tool.spec_for("mock-model") is None
    assert ApplyPatchTool(form="function").spec_for("mock-model") == function
    assert ToolRegistry([tool]).specs("mock-model") == []


async def test_add_update_move_and_delete_apply_inside_the_roots(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("def main():\n    print('hi')\n")
    (tmp_path / "old.txt").write_text("bye\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    patch = envelope("*** Add File: src/new.txt", "+hello", "*** Update File: app.py", "*** Move to: main.py",
                     "@@ def main():", "-    print('hi')", "+    print('hello')", "*** Delete File: old.txt")
    output = await ApplyPatchTool().run(patch, rec.ctx)
    assert output.endswith("Success. Updated the following files:\nA src/new.txt\nM main.py\nD old.txt\n")
    assert (tmp_path / "src" / "new.txt").read_text() == "hello\n"
    assert (tmp_path / "main.py").read_text() == "def main():\n    print('hello')\n"
    assert not (tmp_path / "app.py").exists() and not (tmp_path / "old.txt").exists()
    assert rec.asked == [] and [phase for phase, _ in rec.items] == ["started", "completed"]
    assert rec.final.status == "completed"
    assert [(c.kind, os.path.basename(c.path)) for c in rec.final.changes] == [
        ("add", "new.txt"), ("update", "app.py"), ("delete", "old.txt")]
    assert rec.final.changes[1].move_path == str(tmp_path / "main.py")
    assert not [p for p in tmp_path.rglob(".apply_patch-*")]  # nothing staged is left behind


async def test_a_patch_that_does_not_apply_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    patch = envelope("*** Add File: b.txt", "+new", "*** Update File: a.txt", "@@", "-two", "+three")
    output = await ApplyPatchTool().run(patch, rec.ctx)
    assert output == "apply_patch verification failed: failed to find the expected lines in a.txt:\ntwo"
    assert not (tmp_path / "b.txt").exists() and rec.final.status == "failed"


async def test_a_failure_midway_puts_every_file_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    real_replace, calls = os.replace, []

    def flaky(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 4 and not os.path.basename(src).startswith(".apply_patch-old"):
            raise OSError(28, "No space left on device", dst)
        real_replace(src, dst)

    monkeypatch.setattr(apply_patch_tool.os, "replace", flaky)
    patch = envelope("*** Update File: a.txt", "@@", "-a", "+A", "*** Update File: b.txt", "@@", "-b", "+B",
                     "*** Add File: c.txt", "+c")
    output = await ApplyPatchTool().run(patch, rec.ctx)
    assert output.startswith("apply_patch failed: nothing was changed: No space left on device")
    monkeypatch.setattr(apply_patch_tool.os, "replace", real_replace)
    assert (tmp_path / "a.txt").read_text() == "a\n" and (tmp_path / "b.txt").read_text() == "b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert rec.final.status == "failed"


async def test_files_outside_the_roots_are_refused_under_never_and_asked_for_otherwise(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "escape").symlink_to(outside)
    (work / ".git").mkdir()
    for target in ("../outside/x.txt", "escape/x.txt", ".git/hooks/pre-commit"):
        patch = envelope(f"*** Add File: {target}", "+x")
        never = Recorder(work, sandbox=roots(work), approval="never")
        output = await ApplyPatchTool().run(patch, never.ctx)
        assert output.startswith(("apply_patch refused", "apply_patch verification failed")), output
        asking = Recorder(work, sandbox=roots(work))
        output = await ApplyPatchTool().run(patch, asking.ctx)
        if ".." in target:
            assert "may not contain '..'" in output and asking.asked == []
            continue
        assert output == "patch rejected by user" and asking.final.status == "declined"
        (request,) = asking.asked
        assert isinstance(request, ApplyPatchApprovalRequestEvent) and request.reason and "outside" in request.reason
    assert not (outside / "x.txt").exists() and not (work / ".git" / "hooks").exists()
    approving = Recorder(work, sandbox=roots(work))
    approving.decision = "approved"
    await ApplyPatchTool().run(envelope("*** Add File: escape/x.txt", "+x"), approving.ctx)
    assert (outside / "x.txt").read_text() == "x\n"


async def test_untrusted_asks_even_inside_the_roots_and_shows_the_diff(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path), approval="untrusted")
    await ApplyPatchTool().run(envelope("*** Update File: a.txt", "@@", "-one", "+two"), rec.ctx)
    (request,) = rec.asked
    assert isinstance(request, ApplyPatchApprovalRequestEvent)
    assert request.changes == {str(tmp_path / "a.txt"): UpdateChange(unified_diff="@@ -1 +1 @@\n-one\n+two\n")}
    assert (tmp_path / "a.txt").read_text() == "one\n"


async def test_a_patch_round_trip_over_the_wire_in_both_forms(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    patch = envelope("*** Add File: hello.txt", "+hello")
    async with make_runtime() as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {"cwd": str(tmp_path)}))["thread"]["id"]
        mock_model.script(Custom("apply_patch", patch), Call(name="apply_patch", arguments={"input": patch.replace("hello", "again")}),
                          Text(text="done"), thread_id=tid)
        turn = await client.run_turn(tid, "write it")
        assert turn["status"] == "completed"
        inputs = mock_model.requests[-1].json()["input"]
        outputs = [(i["type"], i["output"].splitlines()[-1]) for i in inputs if i["type"].endswith("_output")]
        assert outputs == [("custom_tool_call_output", "A hello.txt"), ("function_call_output", "A again.txt")]
        changes = [n["params"]["item"] for n in client.notifications
                   if n["method"] == "item/completed" and n["params"]["item"]["type"] == "fileChange"]
        assert [c["status"] for c in changes] == ["completed", "completed"]
        assert changes[0]["changes"] == [{"path": str(tmp_path / "hello.txt"), "kind": {"type": "add"}, "diff": "hello\n"}]
        assert (tmp_path / "hello.txt").read_text() == "hello\n" and (tmp_path / "again.txt").read_text() == "again\n"
        diffs = [n["params"]["diff"] for n in client.notifications if n["method"] == "turn/diff/updated"]
        hello = f"diff --git a/hello.txt b/hello.txt\nnew file mode 100644\nindex {ZERO}..{oid('hello')}\n" \
                "--- /dev/null\n+++ b/hello.txt\n@@ -0,0 +1 @@\n+hello\n"
        again = f"diff --git a/again.txt b/again.txt\nnew file mode 100644\nindex {ZERO}..{oid('again')}\n" \
                "--- /dev/null\n+++ b/again.txt\n@@ -0,0 +1 @@\n+again\n"
        assert diffs == [hello, again + hello]  # the turn's net changes so far, after each, by path


async def test_no_file_is_read_before_the_paths_are_checked_and_only_regular_files_are(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.env"
    secret.parent.mkdir()
    secret.write_text("API_KEY=hunter2\n")
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / "pipe")
    never = Recorder(work, sandbox=roots(work), approval="never")
    output = await ApplyPatchTool().run(envelope(f"*** Delete File: {secret}"), never.ctx)
    assert output.startswith("apply_patch refused") and "hunter2" not in repr(never.items)
    rec = Recorder(work, sandbox=roots(work))
    with trio.fail_after(5):  # a FIFO, a device: refused, never read (it would block, or never end)
        for target in ("pipe", "/dev/zero"):
            out = await ApplyPatchTool().run(envelope(f"*** Update File: {target}", "@@", "-a", "+b"), rec.ctx)
            assert "not a regular file" in out, out
    assert secret.read_text() == "API_KEY=hunter2\n"


@pytest.mark.parametrize("patch", [
    envelope("*** Add File: .", "+x"), envelope("*** Add File: src", "+x"),
    envelope("*** Update File: a.txt", "*** Move to: src", "@@", "-a", "+b"),
])
async def test_a_folder_is_never_replaced(tmp_path: Path, patch: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "keep.py").write_text("keep\n")
    (tmp_path / "a.txt").write_text("a\n")
    output = await ApplyPatchTool().run(patch, Recorder(tmp_path, sandbox=roots(tmp_path)).ctx)
    assert "is a folder" in output
    assert (tmp_path / "src" / "keep.py").read_text() == "keep\n" and (tmp_path / "a.txt").read_text() == "a\n"


async def test_accept_for_session_covers_the_same_changes_only(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "out").mkdir()
    rec = Recorder(tmp_path, sandbox=roots(tmp_path), approval="untrusted")
    remembered: set[Hashable] = set()

    async def ask(request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        """What Approvals does with approved_for_session: the same key is not asked again."""
        if key not in remembered:
            rec.asked.append(request)
            remembered.add(key)
        return "approved_for_session"

    ctx = dataclasses.replace(rec.ctx, ask_approval=ask)
    await ApplyPatchTool().run(envelope("*** Update File: a.txt", "@@", "-a", "+b"), ctx)
    await ApplyPatchTool().run(envelope("*** Update File: a.txt", "@@", "-b", "+c"), ctx)
    assert len(rec.asked) == 1  # the same change to the same file: asked once
    await ApplyPatchTool().run(envelope("*** Update File: a.txt", "*** Move to: out/a.txt", "@@", "-c", "+d"), ctx)
    assert len(rec.asked) == 2  # a move is another change: asked again


async def test_a_file_changed_while_the_user_is_asked_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x = 1\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path), approval="untrusted")

    async def edit_then_approve(request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        (tmp_path / "a.txt").write_text("x = 1\nz = 3\n")  # the user edits meanwhile
        return "approved"

    ctx = dataclasses.replace(rec.ctx, ask_approval=edit_then_approve)
    output = await ApplyPatchTool().run(envelope("*** Update File: a.txt", "@@", "-x = 1", "+x = 2"), ctx)
    assert output == "apply_patch failed: nothing was changed: a file changed while the patch waited for approval"
    assert (tmp_path / "a.txt").read_text() == "x = 1\nz = 3\n" and rec.final.status == "failed"


async def test_a_file_made_while_the_user_is_asked_is_not_overwritten(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=roots(tmp_path), approval="untrusted")

    async def write_then_approve(request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        (tmp_path / "a.txt").write_text("mine\n")  # the user makes the file meanwhile
        return "approved"

    ctx = dataclasses.replace(rec.ctx, ask_approval=write_then_approve)
    output = await ApplyPatchTool().run(envelope("*** Add File: a.txt", "+theirs"), ctx)
    assert output == "apply_patch failed: nothing was changed: a file changed while the patch waited for approval"
    assert (tmp_path / "a.txt").read_text() == "mine\n" and rec.final.status == "failed"


async def test_an_interrupt_while_asked_still_ends_the_item(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=roots(tmp_path), approval="untrusted")

    async def never_answered(request: ApprovalRequestEvent, key: Hashable) -> ReviewDecision:
        await trio.sleep_forever()
        raise AssertionError

    ctx = dataclasses.replace(rec.ctx, ask_approval=never_answered)
    with trio.move_on_after(0.1):
        await ApplyPatchTool().run(envelope("*** Add File: x.txt", "+x"), ctx)
    assert [phase for phase, _ in rec.items] == ["started", "completed"] and not (tmp_path / "x.txt").exists()


async def test_hunks_on_one_file_build_on_each_other_and_line_endings_and_links_are_kept(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("a\nb\nc\n")
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    (tmp_path / "AGENTS.md").write_text("old\n")
    (tmp_path / "CLAUDE.md").symlink_to("AGENTS.md")
    patch = envelope("*** Update File: f.txt", "@@", "-a", "+A", "*** Update File: f.txt", "@@", "-c", "+C",
                     "*** Update File: crlf.txt", "@@", "-two", "+2", "*** Update File: CLAUDE.md", "@@", "-old", "+new",
                     "*** Add File: odd.txt", "+x\u2028y\x0cz")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await ApplyPatchTool().run(patch, rec.ctx)
    assert (tmp_path / "f.txt").read_text() == "A\nb\nC\n"
    assert (tmp_path / "crlf.txt").read_bytes() == b"one\r\n2\r\n"
    assert (tmp_path / "CLAUDE.md").is_symlink() and (tmp_path / "AGENTS.md").read_text() == "new\n"
    assert (tmp_path / "odd.txt").read_text() == "x\u2028y\x0cz\n"
    assert [os.path.basename(c.path) for c in rec.final.changes] == ["f.txt", "crlf.txt", "CLAUDE.md", "odd.txt"]


async def test_a_control_character_in_a_path_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    patch = envelope("*** Update File: a.txt", "@@", "-a", "+A", "*** Add File: b\0c", "+x")
    output = await ApplyPatchTool().run(patch, Recorder(tmp_path, sandbox=roots(tmp_path)).ctx)
    assert "control characters" in output and (tmp_path / "a.txt").read_text() == "a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
