"""The turn's net diff (`turn/diff/updated`), as Codex's TurnDiffTracker makes it: for every file the
turn's patches wrote, one git-style section from the file's text when the turn first touched it to
its text now, the files in path order."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from spindle.actors.runtime import apply_patch_tool
from spindle.actors.runtime.apply_patch_tool import ApplyPatchTool
from spindle.actors.testing.mock_model import Custom, MockModel, Text
from spindle.persistence.policy import should_persist_event
from spindle.protocol.events import TurnDiffEvent

from .helpers import app_client
from .test_apply_patch import ZERO, Recorder, blob_id, envelope, oid, roots


async def apply(rec: Recorder, *body: str) -> str:
    return await ApplyPatchTool().run(envelope(*body), rec.ctx)


async def test_two_patches_to_one_file_give_one_section_from_its_baseline_to_its_text_now(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: a.txt", "@@", "-one", "+ONE")
    await apply(rec, "*** Update File: a.txt", "@@", "-three", "+THREE")
    assert len(rec.diffs) == 2
    assert rec.diffs[-1] == (
        f"diff --git a/a.txt b/a.txt\nindex {oid('one', 'two', 'three')}..{oid('ONE', 'two', 'THREE')}\n"
        "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n-one\n+ONE\n two\n-three\n+THREE\n"
    )


async def test_a_file_added_then_deleted_leaves_the_diff(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Add File: new.txt", "+x", "*** Update File: a.txt", "@@", "-one", "+ONE")
    assert "new.txt" in rec.diffs[-1]
    await apply(rec, "*** Delete File: new.txt")
    assert rec.diffs[-1] == (
        f"diff --git a/a.txt b/a.txt\nindex {oid('one')}..{oid('ONE')}\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+ONE\n"
    )
    alone = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(alone, "*** Add File: new.txt", "+x")
    await apply(alone, "*** Delete File: new.txt")
    assert alone.diffs[-1] == ""  # no net change: the diff is empty again


async def test_a_move_shows_the_baseline_path_to_the_new_path(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("line\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: src.txt", "*** Move to: dst.txt", "@@", "-line", "+line2")
    await apply(rec, "*** Update File: dst.txt", "@@", "-line2", "+line3")
    assert rec.diffs[-1] == (
        f"diff --git a/src.txt b/dst.txt\nindex {oid('line')}..{oid('line3')}\n"
        "--- a/src.txt\n+++ b/dst.txt\n@@ -1 +1 @@\n-line\n+line3\n"
    )
    await apply(rec, "*** Update File: dst.txt", "*** Move to: src.txt", "@@", "-line3", "+line")
    assert rec.diffs[-1] == ""  # moved back, as it was


async def test_a_move_over_a_file_deletes_the_source_and_updates_the_destination(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("from\n")
    (tmp_path / "b.txt").write_text("existing\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: a.txt", "*** Move to: b.txt", "@@", "-from", "+new")
    assert (tmp_path / "b.txt").read_text() == "new\n"
    assert rec.diffs[-1] == (
        f"diff --git a/a.txt b/a.txt\ndeleted file mode 100644\nindex {oid('from')}..{ZERO}\n"
        "--- a/a.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-from\n"
        f"diff --git a/b.txt b/b.txt\nindex {oid('existing')}..{oid('new')}\n"
        "--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-existing\n+new\n"
    )


async def test_a_pure_rename_changes_no_text_and_shows_nothing_as_in_codex(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("same\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: old.txt", "*** Move to: new.txt", "@@", " same")
    assert (tmp_path / "new.txt").read_text() == "same\n" and rec.diffs == [""]


async def test_an_add_over_an_existing_file_shows_as_its_update(tmp_path: Path) -> None:
    (tmp_path / "dup.txt").write_text("before\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Add File: dup.txt", "+after")
    assert rec.diffs[-1] == (
        f"diff --git a/dup.txt b/dup.txt\nindex {oid('before')}..{oid('after')}\n"
        "--- a/dup.txt\n+++ b/dup.txt\n@@ -1 +1 @@\n-before\n+after\n"
    )


async def test_files_are_in_path_order_whatever_order_the_patches_touched_them(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Add File: z.txt", "+z")
    await apply(rec, "*** Add File: m/b.txt", "+b", "*** Add File: a.txt", "+a")
    headers = [line for line in rec.diffs[-1].splitlines() if line.startswith("diff --git")]
    assert headers == ["diff --git a/a.txt b/a.txt", "diff --git a/m/b.txt b/m/b.txt", "diff --git a/z.txt b/z.txt"]


async def test_a_patch_that_fails_or_is_declined_changes_nothing_in_the_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: a.txt", "@@", "-one", "+two")
    real_replace = os.replace

    def full_disk(src: str, dst: str) -> None:
        if not os.path.basename(src).startswith(".apply_patch-old"):
            raise OSError(28, "No space left on device", dst)
        real_replace(src, dst)

    monkeypatch.setattr(apply_patch_tool.os, "replace", full_disk)
    failed = await apply(rec, "*** Update File: a.txt", "@@", "-two", "+three", "*** Add File: c.txt", "+c")
    monkeypatch.setattr(apply_patch_tool.os, "replace", real_replace)
    assert failed.startswith("apply_patch failed: nothing was changed")
    assert (await apply(rec, "*** Update File: a.txt", "@@", "-nowhere", "+x")).startswith("apply_patch verification failed")
    declined = dataclasses.replace(rec.ctx, sandbox=roots(tmp_path / "elsewhere"))  # the same turn: asked, and denied
    assert await ApplyPatchTool().run(envelope("*** Add File: d.txt", "+d"), declined) == "patch rejected by user"
    assert len(rec.diffs) == 1
    await apply(rec, "*** Update File: a.txt", "@@", "-two", "+four")
    assert rec.diffs[-1] == (
        f"diff --git a/a.txt b/a.txt\nindex {oid('one')}..{oid('four')}\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+four\n"
    )


async def test_the_baseline_is_the_text_first_read_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("one\nkeep\n")
    real_read, on_the_loop = apply_patch_tool._read, []

    def read(path: str) -> str:
        try:
            trio.lowlevel.current_task()
            on_the_loop.append(path)
        except RuntimeError:
            pass  # a worker thread
        return real_read(path)

    monkeypatch.setattr(apply_patch_tool, "_read", read)
    rec = Recorder(tmp_path, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: a.txt", "@@", "-one", "+two")
    (tmp_path / "a.txt").write_text("two\nkept\n")  # edited by someone else between two patches
    await apply(rec, "*** Update File: a.txt", "@@", "-two", "+three")
    assert on_the_loop == []
    assert rec.diffs[-1] == (
        f"diff --git a/a.txt b/a.txt\nindex {oid('one', 'keep')}..{oid('three', 'kept')}\n"
        "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n-one\n-keep\n+three\n+kept\n"
    )


async def test_paths_are_shown_from_the_git_root_and_absolute_outside_it(tmp_path: Path) -> None:
    work = tmp_path / "repo" / "sub"
    work.mkdir(parents=True)
    (tmp_path / "repo" / ".git").mkdir()
    (work / "a.txt").write_text("no newline")
    rec = Recorder(work, sandbox=roots(tmp_path))
    await apply(rec, "*** Update File: a.txt", "@@", "-no newline", "+newline", f"*** Add File: {tmp_path}/out.txt", "+o")
    assert rec.diffs[-1] == (
        f"diff --git a/{tmp_path}/out.txt b/{tmp_path}/out.txt\nnew file mode 100644\nindex {ZERO}..{oid('o')}\n"
        f"--- /dev/null\n+++ b/{tmp_path}/out.txt\n@@ -0,0 +1 @@\n+o\n"
        f"diff --git a/sub/a.txt b/sub/a.txt\nindex {blob_id('no newline')}..{oid('newline')}\n"
        "--- a/sub/a.txt\n+++ b/sub/a.txt\n@@ -1 +1 @@\n-no newline\n\\ No newline at end of file\n+newline\n"
    )  # outside the root a path stays absolute (`a//tmp/...`), as Codex shows it


async def test_a_new_turn_starts_from_fresh_baselines(
    make_runtime: Callable[..., Any], mock_model: MockModel, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    async with make_runtime() as rt, app_client(rt) as client:
        tid = (await client.call("thread/start", {"cwd": str(tmp_path)}))["thread"]["id"]
        mock_model.script(Custom("apply_patch", envelope("*** Update File: a.txt", "@@", "-one", "+two")), Text(text="1"),
                          Custom("apply_patch", envelope("*** Update File: a.txt", "@@", "-two", "+three")), Text(text="2"),
                          thread_id=tid)
        first, second = await client.run_turn(tid, "one"), await client.run_turn(tid, "two")
        diffs = [(n["params"]["turnId"], n["params"]["diff"]) for n in client.notifications
                 if n["method"] == "turn/diff/updated"]
        assert diffs == [
            (first["id"], f"diff --git a/a.txt b/a.txt\nindex {oid('one')}..{oid('two')}\n"
                          "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n"),
            (second["id"], f"diff --git a/a.txt b/a.txt\nindex {oid('two')}..{oid('three')}\n"
                           "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-two\n+three\n"),
        ]
    assert not should_persist_event(TurnDiffEvent(turn_id=first["id"], unified_diff=diffs[0][1]))  # live only, as in Codex


def test_a_file_no_patch_changed_since_the_last_render_is_not_diffed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from spindle.actors.runtime import turn_diff
    from spindle.actors.runtime.patch import FileChange

    diffed: list[str] = []
    real = turn_diff._section

    def counting(old_name: str, old: str | None, new_name: str, new: str | None) -> str:
        diffed.append(old_name)
        return real(old_name, old, new_name, new)

    monkeypatch.setattr(turn_diff, "_section", counting)
    tracker = turn_diff.TurnDiff()
    tracker.record([FileChange(kind="update", path="/r/a", diff="", original="1\n", content="2\n")])
    tracker.record([FileChange(kind="update", path="/r/b", diff="", original="x\n", content="y\n")])
    first = turn_diff.render(tracker.snapshot(), "/r", tracker.sections)
    tracker.record([FileChange(kind="update", path="/r/b", diff="", original="y\n", content="z\n")])
    second = turn_diff.render(tracker.snapshot(), "/r", tracker.sections)
    assert diffed == ["a", "b", "b"]  # `a` was not diffed again
    assert second == turn_diff.render(tracker.snapshot(), "/r") and second != first
