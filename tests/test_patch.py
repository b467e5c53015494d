"""The apply_patch envelope: parsing, planning against file text, diffs, and clear errors."""

from __future__ import annotations

import difflib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spindle.actors.runtime.patch import (
    AddFile,
    Chunk,
    DeleteFile,
    FileChange,
    PatchError,
    UpdateFile,
    apply_chunks,
    parse,
    plan,
    summary,
)

FILES = {
    "/w/app.py": "import os\n\ndef main():\n    print(\"hi\")\n    return 0\n",
    "/w/old.txt": "bye\n",
}


def read(path: str) -> str:
    try:
        return FILES[path]
    except KeyError:
        raise FileNotFoundError(2, "No such file or directory") from None


def test_parse_add_delete_update_with_move_and_eof() -> None:
    hunks = parse(
        "*** Begin Patch\n*** Add File: hello.txt\n+hello\n+world\n*** Delete File: old.txt\n"
        "*** Update File: app.py\n*** Move to: main.py\n@@ def main():\n-    print(\"hi\")\n+    print(\"hello\")\n"
        "@@\n     return 0\n+# end\n*** End of File\n*** End Patch\n"
    )
    assert hunks == [
        AddFile(path="hello.txt", content="hello\nworld\n"),
        DeleteFile(path="old.txt"),
        UpdateFile(path="app.py", move_to="main.py", chunks=[
            Chunk(context="def main():", old=['    print("hi")'], new=['    print("hello")']),
            Chunk(old=["    return 0"], new=["    return 0", "# end"], at_end=True),
        ]),
    ]


def test_a_heredoc_around_the_patch_is_unwrapped() -> None:
    assert parse("<<'EOF'\n*** Begin Patch\n*** Delete File: x\n*** End Patch\nEOF\n") == [DeleteFile(path="x")]


@pytest.mark.parametrize(("text", "message"), [
    ("hello", "the first line of the patch must be '*** Begin Patch'"),
    ("*** Begin Patch\n*** Delete File: x\n", "the last line of the patch must be '*** End Patch'"),
    ("*** Begin Patch\n*** End Patch", "the patch changes no file"),
    ("*** Begin Patch\n*** Frobnicate File: x\n*** End Patch", "line 2: '*** Frobnicate File: x' is not a valid hunk header"),
    ("*** Begin Patch\n*** Update File: x\n*** End Patch", "line 3: the update of 'x' has no hunk"),
    ("*** Begin Patch\n*** Update File: x\n@@\n?what\n*** End Patch", "line 4: '?what' is not a hunk line"),
    ("*** Begin Patch\n*** Add File: \n+x\n*** End Patch", "line 2: '*** Add File:' names no file"),
])
def test_a_bad_patch_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(PatchError, match="^" + message.replace("*", r"\*").replace("?", r"\?")):
        parse(text)


def test_plan_gives_absolute_paths_new_contents_and_diffs() -> None:
    hunks = parse(
        "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** Delete File: old.txt\n"
        "*** Update File: app.py\n*** Move to: main.py\n@@ def main():\n-    print(\"hi\")\n+    print(\"hello\")\n"
        "*** End Patch"
    )
    add, delete, update = plan(hunks, "/w", read)
    assert (add.path, add.kind, add.content, add.diff) == ("/w/hello.txt", "add", "hello\n", "hello\n")
    assert (delete.path, delete.kind, delete.content, delete.diff) == ("/w/old.txt", "delete", None, "bye\n")
    assert (update.path, update.move_path, update.kind) == ("/w/app.py", "/w/main.py", "update")
    assert update.content == FILES["/w/app.py"].replace('print("hi")', 'print("hello")')
    assert update.diff == '@@ -3,3 +3,3 @@\n def main():\n-    print("hi")\n+    print("hello")\n     return 0\n'
    assert summary([add, delete, update], "/w") == (
        "Success. Updated the following files:\nA hello.txt\nD old.txt\nM main.py\n")


def test_plan_keeps_the_text_an_add_or_a_move_overwrites() -> None:
    def one(patch: str) -> FileChange:
        (change,) = plan(parse(f"*** Begin Patch\n{patch}*** End Patch"), "/w", read)
        return change

    assert one("*** Add File: old.txt\n+x\n").original == "bye\n"
    assert one("*** Add File: new.txt\n+x\n").original is None
    move = "*** Update File: app.py\n*** Move to: {}\n@@\n-    return 0\n+    return 1\n"
    assert one(move.format("old.txt")).replaced == "bye\n"
    assert one(move.format("main.py")).replaced is None


def test_hunks_match_with_whitespace_and_typographic_punctuation_loosened() -> None:
    text = "title \u201cquoted\u201d \u2013 dash\n  indented  \nlast\n"
    chunk = Chunk(old=['title "quoted" - dash', "indented"], new=["replaced"])
    assert apply_chunks(text, [chunk], "f") == "replaced\nlast\n"


def test_end_of_file_anchors_at_the_end_and_pure_additions_append() -> None:
    text = "x\ny\nx\n"
    assert apply_chunks(text, [Chunk(old=["x"], new=["z"], at_end=True)], "f") == "x\ny\nz\n"
    assert apply_chunks(text, [Chunk(old=[], new=["added"])], "f") == "x\ny\nx\nadded\n"
    assert apply_chunks("no newline", [Chunk(old=["no newline"], new=["fixed"])], "f") == "fixed\n"


def test_each_hunk_is_sought_after_the_previous_one() -> None:
    chunks = [Chunk(old=["a"], new=["b"]), Chunk(old=["a"], new=["c"])]
    assert apply_chunks("a\na\n", chunks, "f") == "b\nc\n"


@pytest.mark.parametrize(("patch", "message"), [
    ("*** Update File: app.py\n@@ def nope():\n-x\n+y\n", "failed to find context 'def nope():' in app.py"),
    ("*** Update File: app.py\n@@\n-    print(\"bye\")\n+    x\n", "failed to find the expected lines in app.py:\n    print(\"bye\")"),
    ("*** Update File: missing.py\n@@\n-a\n+b\n", "cannot update '/w/missing.py': No such file or directory"),
    ("*** Delete File: ../escape.txt\n", r"'../escape.txt': a patch path may not contain '..'"),
    ("*** Add File: a/../../x\n+x\n", r"'a/../../x': a patch path may not contain '..'"),
])
def test_a_patch_that_does_not_apply_is_refused_saying_why(patch: str, message: str) -> None:
    with pytest.raises(PatchError) as err:
        plan(parse(f"*** Begin Patch\n{patch}*** End Patch"), "/w", read)
    assert str(err.value) == message


lines = st.lists(st.text(alphabet="abc ", min_size=0, max_size=6), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(old=lines, new=lines)
def test_a_patch_built_from_any_diff_turns_the_old_text_into_the_new(old: list[str], new: list[str]) -> None:
    """Round trip: the hunks difflib finds, written as an envelope, applied to the old text."""
    before, after = "".join(x + "\n" for x in old), "".join(x + "\n" for x in new)
    body = []
    for group in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_grouped_opcodes(3):
        body.append("@@")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                body += [" " + x for x in old[i1:i2]]
            else:
                body += ["-" + x for x in old[i1:i2]] + ["+" + x for x in new[j1:j2]]
    if not body:
        return
    (change,) = plan(parse("*** Begin Patch\n*** Update File: f\n" + "\n".join(body) + "\n*** End Patch"),
                     "/w", lambda _: before)
    assert change.content == after
