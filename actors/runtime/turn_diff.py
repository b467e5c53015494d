"""A turn's net diff, as Codex's `TurnDiffTracker` makes it for `turn/diff/updated`: for every file
the turn's patches wrote, the unified diff from its text when the turn first touched it (its
baseline; no file, if there was none) to its text now, the files in path order.

Each section has git's headers (`diff --git a/OLD b/NEW`, `new file mode` or `deleted file mode`,
`index` with the two blob ids, `---` / `+++` with `/dev/null` for a side with no file) and hunks
with three lines of context. A file moved away from its baseline path to a path that had no file
is one section from the old path to the new; a file whose text is back to its baseline (added then
deleted, moved and moved back, renamed without an edit) has none. Paths are shown from the git
work tree of the turn's cwd (the cwd outside one); a path outside that stays absolute.

`TurnDiff.record` takes what a patch wrote, with the texts its plan read before writing: no file
is read again, and only the files the turn touched are kept. `render` is pure and works on a
snapshot, so it can run in a worker thread (it diffs whole files).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .patch import FileChange

CONTEXT_LINES = 3
"""Context lines around each change (git's default, and Codex's for the turn diff)."""
ZERO_OID = "0" * 40
"""The blob id of a side that has no file."""
FILE_MODE = "100644"
DEV_NULL = "/dev/null"
NO_NEWLINE = "\n\\ No newline at end of file\n"


@dataclass(frozen=True, kw_only=True)
class NetDiff:
    """A turn's touched files as they stand: what `render` reads."""

    baselines: Mapping[str, str | None]
    """Each touched path's text when the turn first touched it (None: there was no file)."""
    texts: Mapping[str, str | None]
    """Each touched path's text now (None: there is no file)."""
    origins: Mapping[str, str]
    """The path a moved text was first touched at, by the path it is at now."""


class TurnDiff:
    """The files one turn's patches wrote: their baselines and their texts now."""

    def __init__(self) -> None:
        self.root: str | None = None
        """Where paths are shown from (`display_root` of the turn's cwd), once it is known."""
        self._baselines: dict[str, str | None] = {}
        self._texts: dict[str, str | None] = {}
        self._origins: dict[str, str] = {}
        self.sections: SectionCache = {}
        """What `render` made last, per file (kept for the turn)."""

    def record(self, changes: Iterable[FileChange]) -> None:
        """Add what one applied patch wrote, its changes in the order they were applied."""
        for change in changes:
            source, target = change.path, change.move_path or change.path
            self._baselines.setdefault(source, change.original)
            if target != source:
                self._baselines.setdefault(target, change.replaced)
            origin = self._origins.pop(source, source) if change.kind == "update" else target
            self._origins.pop(target, None)
            self._texts[source] = None
            if change.content is not None:
                self._texts[target] = change.content
                if origin != target:
                    self._origins[target] = origin

    def snapshot(self) -> NetDiff:
        return NetDiff(baselines=dict(self._baselines), texts=dict(self._texts), origins=dict(self._origins))


SectionCache = dict[tuple[str, str], tuple[str | None, str | None, str]]
"""A file's last rendered section, by its (old, new) display names, with the texts it was made
from (compared by identity: a text the turn did not write again is the same object)."""


def render(net: NetDiff, root: str, cache: SectionCache | None = None) -> str:
    """The unified diff of `net`, paths shown from `root`; empty when nothing changed on the whole.
    With `cache`, a file whose texts did not change since the last render is not diffed again."""
    moves = {origin: path for path, origin in net.origins.items() if _is_move(net, origin, path)}
    moved_to = set(moves.values())
    sections = []
    for path in sorted(net.baselines, key=lambda p: display_path(p, root)):
        if path in moved_to:
            continue  # shown with its origin
        target = moves.get(path, path)
        names = (display_path(path, root), display_path(target, root))
        old, new = net.baselines[path], net.texts.get(target)
        hit = cache.get(names) if cache is not None else None
        if hit is not None and hit[0] is old and hit[1] is new:
            sections.append(hit[2])
            continue
        section = _section(names[0], old, names[1], new)
        if cache is not None:
            cache[names] = (old, new, section)
        sections.append(section)
    return "".join(sections)


def _is_move(net: NetDiff, origin: str, path: str) -> bool:
    """Whether the text at `path` shows as moved from `origin`: the file was at `origin` when the
    turn began and is gone from it, and `path` had no file and has one."""
    return (net.baselines.get(origin) is not None and net.texts.get(origin) is None
            and net.baselines.get(path) is None and net.texts.get(path) is not None)


def _section(old_name: str, old: str | None, new_name: str, new: str | None) -> str:
    if old == new:
        return ""
    head = f"diff --git a/{old_name} b/{new_name}\n"
    if old is None:
        head += f"new file mode {FILE_MODE}\n"
    elif new is None:
        head += f"deleted file mode {FILE_MODE}\n"
    head += f"index {blob_id(old)}..{blob_id(new)}\n"
    lines = difflib.unified_diff(
        _lines(old), _lines(new), f"a/{old_name}" if old is not None else DEV_NULL,
        f"b/{new_name}" if new is not None else DEV_NULL, n=CONTEXT_LINES)
    return head + "".join(line if line.endswith("\n") else line + NO_NEWLINE for line in lines)


def _lines(text: str | None) -> list[str]:
    """`text` split after each newline only (a form feed or a U+2028 is no line break in a diff)."""
    if not text:
        return []
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def blob_id(text: str | None) -> str:
    """The git blob id of `text` (UTF-8), or ZERO_OID when there is no file."""
    if text is None:
        return ZERO_OID
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def display_path(path: str, root: str) -> str:
    """`path` as a diff shows it: relative below `root`, absolute elsewhere."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def display_root(cwd: str) -> str:
    """Where a turn's paths are shown from: the nearest folder at or above `cwd` that holds a
    `.git`, else `cwd`. Blocking: call it in a worker thread."""
    folder = cwd
    while not os.path.exists(os.path.join(folder, ".git")):
        parent = os.path.dirname(folder)
        if parent == folder:
            return cwd
        folder = parent
    return folder
