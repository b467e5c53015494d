"""Where rollouts live: `sessions/YYYY/MM/DD/rollout-YYYY-MM-DDThh-mm-ss-<id>.jsonl` under CODEX_HOME.

Every path is built from a validated UUID, so no id can point outside `$CODEX_HOME`. When
CODEX_HOME cannot be used, `store_error` turns the operating system's error into one sentence
naming the path, the cause and what to do.
"""

from __future__ import annotations

import errno
import re
from datetime import UTC, datetime
from pathlib import Path

from spindle.protocol.ids import parse_thread_id

SESSIONS_SUBDIR = "sessions"
ARCHIVED_SESSIONS_SUBDIR = "archived_sessions"
_NAME = re.compile(
    r"^rollout-(\d{4})-(\d{2})-(\d{2})T\d{2}-\d{2}-\d{2}-"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:_[0-9a-f-]+)?\.jsonl$"
)


def now_utc() -> datetime:
    return datetime.now(UTC)


def timestamp(at: datetime | None = None) -> str:
    """UTC ISO-8601 with milliseconds and `Z`, as rollout lines carry it."""
    at = at or now_utc()
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def rollout_file_name(thread_id: str, created: datetime) -> str:
    tid = parse_thread_id(thread_id)
    return f"rollout-{created.strftime('%Y-%m-%dT%H-%M-%S')}-{tid}.jsonl"


def rollout_path(home: Path, thread_id: str, created: datetime) -> Path:
    """The live rollout path of a thread created at `created` (UTC)."""
    return home / SESSIONS_SUBDIR / created.strftime("%Y/%m/%d") / rollout_file_name(thread_id, created)


def archived_path(home: Path, live: Path) -> Path:
    return home / ARCHIVED_SESSIONS_SUBDIR / live.name


def unarchived_path(home: Path, archived: Path) -> Path:
    match = _NAME.match(archived.name)
    if match is None:
        raise ValueError(f"not a rollout file name: {archived.name!r}")
    year, month, day = match.group(1, 2, 3)
    return home / SESSIONS_SUBDIR / year / month / day / archived.name


def thread_id_of(path: Path) -> str | None:
    match = _NAME.match(path.name)
    return match.group(4) if match else None


def find_thread_path_by_id(home: Path, thread_id: str, *, archived: bool = False) -> Path | None:
    """The rollout file of `thread_id`, by scanning the directories (the index's fallback)."""
    tid = parse_thread_id(thread_id)
    if archived:
        hits = sorted((home / ARCHIVED_SESSIONS_SUBDIR).glob(f"rollout-*-{tid}.jsonl"))
    else:
        hits = sorted((home / SESSIONS_SUBDIR).glob(f"*/*/*/rollout-*-{tid}.jsonl"))
    return hits[-1] if hits else None


def is_within(home: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(home.resolve())
    except ValueError:
        return False
    return True


class ThreadStoreError(Exception):
    """A store operation that cannot be done; the message says why."""


class ThreadStoreUnavailableError(ThreadStoreError):
    """CODEX_HOME, a rollout or the index cannot be read or written (permissions, a full disk, a
    damaged index); the message names the path, the cause and what to do."""


def home_advice(home: Path, code: int | None) -> str:
    """What to do about an OS error `code` met under CODEX_HOME `home`."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding CODEX_HOME ({home}) is full: free some space"
    if code == errno.EROFS:
        return f"CODEX_HOME ({home}) is on a read-only file system: set CODEX_HOME to a writable directory"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"part of that path is a file, not a directory: move it aside, or set CODEX_HOME (now {home}) to a directory"
    return f"check that CODEX_HOME ({home}) is writable"


def store_error(action: str, path: Path, exc: OSError, *, home: Path) -> ThreadStoreUnavailableError:
    """`cannot <action> <path>: <cause>; <what to do>`, for an OSError met under `home`."""
    return ThreadStoreUnavailableError(f"cannot {action} {path}: {exc.strerror or exc}; {home_advice(home, exc.errno)}")


def home_of_rollout(path: Path) -> Path:
    """The CODEX_HOME a rollout path lies in (its parent directory when it is not laid out as usual)."""
    if path.parent.name == ARCHIVED_SESSIONS_SUBDIR:
        return path.parent.parent
    parents = path.parents
    if len(parents) > 4 and parents[3].name == SESSIONS_SUBDIR:
        return parents[4]
    return path.parent
