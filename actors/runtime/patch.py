"""The `apply_patch` envelope the model edits files with: parsed into typed hunks, then planned
against the files' current text into a change set (new contents and unified diffs). Pure: no
I/O of its own (the caller passes `read`), so the plan can run in a worker thread and be tested
without files.

The format, as Codex defines it::

    *** Begin Patch
    *** Add File: hello.txt
    +hello
    *** Update File: src/app.py
    *** Move to: src/main.py
    @@ def main():
    -    print("hi")
    +    print("hello")
    *** Delete File: old.txt
    *** End Patch

An update's hunks are found in order, each after the last: an `@@ <line>` header first finds that
line, then the hunk's old lines are sought exactly, then ignoring trailing whitespace, then
ignoring surrounding whitespace, then with typographic punctuation folded to ASCII. A hunk ending
in `*** End of File` is anchored at the end of the file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

BEGIN, END = "*** Begin Patch", "*** End Patch"
ADD, DELETE, UPDATE, MOVE = "*** Add File: ", "*** Delete File: ", "*** Update File: ", "*** Move to: "
END_OF_FILE = "*** End of File"
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
"""Characters that reorder how a path is shown (a name that reads as another)."""
DIFF_CONTEXT_LINES = 1
"""Context lines around each change in a file change's diff (as Codex's items carry them)."""


class PatchError(ValueError):
    """A patch that cannot be parsed or does not apply; the message says where and why."""


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """One hunk of an update: the lines it replaces (`old`) with `new`, found after `context`."""

    context: str | None = None
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    at_end: bool = False


@dataclass(frozen=True, kw_only=True)
class AddFile:
    path: str
    content: str


@dataclass(frozen=True, kw_only=True)
class DeleteFile:
    path: str


@dataclass(frozen=True, kw_only=True)
class UpdateFile:
    path: str
    move_to: str | None = None
    chunks: list[Chunk] = field(default_factory=list)


Hunk = AddFile | DeleteFile | UpdateFile


@dataclass(frozen=True, kw_only=True)
class FileChange:
    """One file's planned change. Paths are absolute; `content` is None for a deletion."""

    path: str
    kind: Literal["add", "delete", "update"]
    diff: str
    content: str | None = None
    move_path: str | None = None
    original: str | None = None
    """The file's text before the patch: what an update or a deletion was planned against, what
    an addition overwrites (None if no file was there)."""
    replaced: str | None = None
    """The text of the file at `move_path` that the move overwrites (None if none was there)."""


# --- parsing ------------------------------------------------------------
def parse(text: str) -> list[Hunk]:
    """The hunks of `text`, in order. PatchError names the offending line."""
    lines = _unwrap([line.removesuffix("\r") for line in text.strip().split("\n")])
    if not lines or lines[0].strip() != BEGIN:
        raise PatchError(f"the first line of the patch must be '{BEGIN}'")
    if lines[-1].strip() != END:
        raise PatchError(f"the last line of the patch must be '{END}'")
    hunks: list[Hunk] = []
    at = 1
    while at < len(lines) - 1:
        hunk, at = _hunk(lines, at)
        hunks.append(hunk)
    if not hunks:
        raise PatchError("the patch changes no file")
    return hunks


def _unwrap(lines: list[str]) -> list[str]:
    """The patch without a shell heredoc around it (`<<'EOF'` ... `EOF`), which models add."""
    if len(lines) >= 4 and lines[0].strip() in ("<<EOF", "<<'EOF'", '<<"EOF"') and lines[-1].strip() == "EOF":
        return lines[1:-1]
    return lines


def _hunk(lines: list[str], at: int) -> tuple[Hunk, int]:
    header = lines[at].strip() + " "  # a header whose path is missing still reads as one
    if header.startswith(ADD):
        path, at = _path(header, ADD, at), at + 1
        body: list[str] = []
        while at < len(lines) and lines[at].startswith("+"):
            body.append(lines[at][1:])
            at += 1
        return AddFile(path=path, content="".join(line + "\n" for line in body)), at
    if header.startswith(DELETE):
        return DeleteFile(path=_path(header, DELETE, at)), at + 1
    if header.startswith(UPDATE):
        path, at = _path(header, UPDATE, at), at + 1
        move_to = None
        if at < len(lines) and (lines[at].strip() + " ").startswith(MOVE):
            move_to, at = _path(lines[at], MOVE, at), at + 1
        chunks: list[Chunk] = []
        while at < len(lines) - 1 and not lines[at].startswith("*** "):
            chunk, at = _chunk(lines, at, first=not chunks)
            chunks.append(chunk)
        if not chunks:
            raise PatchError(f"line {at + 1}: the update of '{path}' has no hunk")
        return UpdateFile(path=path, move_to=move_to, chunks=chunks), at
    raise PatchError(
        f"line {at + 1}: '{lines[at]}' is not a valid hunk header; valid hunk headers: "
        f"'{ADD}{{path}}', '{DELETE}{{path}}', '{UPDATE}{{path}}'"
    )


def _path(line: str, prefix: str, at: int) -> str:
    path = line.strip()[len(prefix):].strip()
    if not path:
        raise PatchError(f"line {at + 1}: '{line.strip()}' names no file")
    return path


def _chunk(lines: list[str], at: int, *, first: bool) -> tuple[Chunk, int]:
    context: str | None = None
    if lines[at].rstrip() == "@@":
        at += 1
    elif lines[at].startswith("@@ "):
        context, at = lines[at][3:], at + 1
    elif not first:
        raise PatchError(f"line {at + 1}: expected '@@' to start a hunk, got '{lines[at]}'")
    old: list[str] = []
    new: list[str] = []
    start = at
    while at < len(lines) - 1:
        line = lines[at]
        if line.strip() == END_OF_FILE:
            if at == start:
                raise PatchError(f"line {at + 1}: a hunk has no lines")
            return Chunk(context=context, old=old, new=new, at_end=True), at + 1
        if line.startswith(("@@", "*** ")):
            break
        if line == "" or line[0] == " ":
            old.append(line[1:])
            new.append(line[1:])
        elif line[0] == "-":
            old.append(line[1:])
        elif line[0] == "+":
            new.append(line[1:])
        else:
            raise PatchError(
                f"line {at + 1}: '{line}' is not a hunk line (each starts with ' ', '+' or '-')")
        at += 1
    if at == start:
        raise PatchError(f"line {at + 1}: a hunk has no lines")
    return Chunk(context=context, old=old, new=new), at


# --- planning -----------------------------------------------------------
def plan(hunks: Sequence[Hunk], cwd: str, read: Callable[[str], str]) -> list[FileChange]:
    """The change set of `hunks`, one change per file, relative paths taken against `cwd`;
    `read(path)` gives a file's current text (OSError if it cannot). A later hunk on a file builds
    on the earlier ones; a CRLF file keeps its line endings. PatchError when a path is unsafe or
    a hunk does not apply."""
    changes: dict[str, FileChange] = {}
    for hunk in hunks:
        path = resolve(cwd, hunk.path)
        prior = changes.get(path)
        match hunk:
            case AddFile(content=content):
                original = prior.original if prior is not None else _existing(read, path)
                changes[path] = FileChange(path=path, kind="add", diff=content, content=content, original=original)
            case DeleteFile():
                old = _current(prior, read, path, "delete")
                original = prior.original if prior is not None else old
                changes[path] = FileChange(path=path, kind="delete", diff=old, original=original)
            case UpdateFile(move_to=move_to, chunks=chunks):
                old = _current(prior, read, path, "update")
                new = _with_line_endings_of(old, apply_chunks(old.replace("\r\n", "\n"), chunks, hunk.path))
                original = prior.original if prior is not None else old
                kind: Literal["add", "update"] = "add" if prior is not None and prior.kind == "add" else "update"
                diff = new if kind == "add" else unified_diff((original or "").replace("\r\n", "\n"), new.replace("\r\n", "\n"))
                move_path = resolve(cwd, move_to) if move_to else None
                replaced = _existing(read, move_path) if move_path is not None and move_path != path else None
                changes[path] = FileChange(path=path, kind=kind, diff=diff, content=new, original=original,
                                           move_path=move_path, replaced=replaced)
    return list(changes.values())


def _current(prior: FileChange | None, read: Callable[[str], str], path: str, verb: str) -> str:
    """A file's text as the hunks before have left it (from disk if none touched it)."""
    if prior is None:
        return _read(read, path, verb)
    if prior.content is None:
        raise PatchError(f"cannot {verb} '{path}': an earlier hunk deleted it")
    return prior.content


def _existing(read: Callable[[str], str], path: str) -> str | None:
    """The text of the file a write would overwrite; None if there is none, or if it cannot be read
    as text (a write may still replace it)."""
    try:
        return read(path)
    except (OSError, UnicodeDecodeError):
        return None


def _with_line_endings_of(old: str, new: str) -> str:
    return new.replace("\n", "\r\n") if "\r\n" in old else new


def resolve(cwd: str, path: str) -> str:
    """`path` made absolute against `cwd`; a `..` component is refused (a patch stays where it says)."""
    if ".." in path.replace("\\", "/").split("/"):
        raise PatchError(f"'{path}': a patch path may not contain '..'")
    if any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F or ch in BIDI_CONTROLS for ch in path):
        raise PatchError(f"{path!r}: a patch path may not contain control characters")
    return os.path.normpath(os.path.join(cwd, path))


def _read(read: Callable[[str], str], path: str, verb: str) -> str:
    try:
        return read(path)
    except OSError as exc:
        raise PatchError(f"cannot {verb} '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PatchError(f"cannot {verb} '{path}': it is not UTF-8 text") from None


def apply_chunks(text: str, chunks: Sequence[Chunk], name: str) -> str:
    """`text` with `chunks` applied in order; PatchError naming the lines that were not found."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    edits: list[tuple[int, int, list[str]]] = []
    at = 0
    for chunk in chunks:
        if chunk.context is not None:
            found = seek(lines, [chunk.context], at, at_end=False)
            if found is None:
                raise PatchError(f"failed to find context '{chunk.context}' in {name}")
            at = found + 1
        if not chunk.old:
            edits.append((len(lines), 0, chunk.new))
            continue
        old, new = chunk.old, chunk.new
        found = seek(lines, old, at, at_end=chunk.at_end)
        if found is None and old[-1] == "":  # a trailing blank line the file does not have
            old, new = old[:-1], new[:-1] if new and new[-1] == "" else new
            found = seek(lines, old, at, at_end=chunk.at_end)
        if found is None:
            raise PatchError(f"failed to find the expected lines in {name}:\n" + "\n".join(chunk.old))
        edits.append((found, len(old), new))
        at = found + len(old)
    for start, length, new in reversed(sorted(edits, key=lambda edit: edit[0])):
        lines[start:start + length] = new
    return "".join(line + "\n" for line in lines)


_PUNCTUATION = str.maketrans({
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u202f": " ", "\u3000": " ",
})
_PASSES: tuple[Callable[[str], str], ...] = (
    lambda s: s, str.rstrip, str.strip, lambda s: s.translate(_PUNCTUATION).strip(),
)


def seek(lines: Sequence[str], pattern: Sequence[str], start: int, *, at_end: bool) -> int | None:
    """Where `pattern` first occurs in `lines` at or after `start` (at the very end if `at_end`),
    trying ever looser line comparisons; None if nowhere."""
    if not pattern:
        return start
    if len(pattern) > len(lines):
        return None
    first = len(lines) - len(pattern) if at_end else start
    for norm in _PASSES:
        want = [norm(line) for line in pattern]
        for i in range(first, len(lines) - len(pattern) + 1):
            if all(norm(lines[i + j]) == want[j] for j in range(len(pattern))):
                return i
    return None


def unified_diff(old: str, new: str) -> str:
    """The hunks turning `old` into `new`, without file headers."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), n=DIFF_CONTEXT_LINES, lineterm="\n")
    body = [line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines]
    return "".join(body[2:])


def summary(changes: Sequence[FileChange], cwd: str) -> str:
    """What the model is told after a patch applied: one `A`/`M`/`D` line per file."""
    marks = {"add": "A", "update": "M", "delete": "D"}
    lines = [f"{marks[c.kind]} {os.path.relpath(c.move_path or c.path, cwd)}" for c in changes]
    return "Success. Updated the following files:\n" + "".join(line + "\n" for line in lines)
