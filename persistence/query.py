"""What `thread/list` asks for: one frozen `ThreadQuery`, its SQL, its cursors and the source kinds.

The store, `StoredThreads.list_threads`, `ThreadManager.list_threads` and the app-server's
`thread/list` all take a `ThreadQuery`; the filters live only here. Pure: no I/O, no trio.

Sorting is by `created_at` (the Codex default), `updated_at` or `recency_at`, then by id, either
direction. Codex's recency is a thread's update time unless its activity advanced it further;
Spindle keeps no separate recency, so `recency_at` orders as `updated_at`. A cursor is an opaque
string holding the sort key and the position (key value and id) of the last thread of a page; the
next page starts strictly after it in the query's direction. The backwards cursor holds the
position of the first thread of a page: used with the opposite direction it returns the threads
before the page, nearest first.

Sections: Codex files threads into sections (pinned, or a user's), ordered by position within
one. Spindle has no sections: every thread is unsectioned, so a filter on a section matches no
thread, and `section_position`, which Codex allows only with such a filter, lists nothing.

Source kinds: a rollout's `session_meta.source` (a string such as "cli", "vscode", "exec", or an
object such as `{"subagent": "review"}`) becomes one `ThreadSourceKind` of the v2 protocol, and a
flag saying whether it is interactive. Interactive sources are Codex's: `cli` and `vscode` (and its
custom `atlas` and `chatgpt`), plus Spindle's legacy `"spindle"` source, which Spindle wrote
before it recorded Codex source values: those threads were started by interactive clients, so the
default listing keeps them (their kind is `appServer`). A missing source is `vscode`, as Codex
reads it; any other string is `unknown`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from spindle.protocol.ids import parse_thread_id

from .cursors import InvalidCursor, decode_cursor, encode_cursor
from .paths import ThreadStoreError

DEFAULT_LIMIT = 50
MAX_ID_FILTER = 100
"""The most ids `included_ids` / `excluded_ids` may hold (Codex's bound)."""
SORT_KEYS = ("created_at", "updated_at", "recency_at", "section_position")
_SORT_COLUMNS = {"created_at": "created_at", "updated_at": "updated_at", "recency_at": "updated_at",
                 "section_position": "updated_at"}
"""The index column each sort key orders by (see the module's doc for the last two)."""
SORT_DIRECTIONS = ("asc", "desc")
SUBAGENT_KINDS = ("subAgentReview", "subAgentCompact", "subAgentThreadSpawn", "subAgentOther")
SOURCE_KINDS = ("cli", "vscode", "exec", "appServer", "subAgent", *SUBAGENT_KINDS, "unknown")
_STRING_SOURCES = {"cli": "cli", "vscode": "vscode", "exec": "exec", "mcp": "appServer",
                   "appServer": "appServer", "app_server": "appServer", "spindle": "appServer"}
_INTERACTIVE_STRINGS = frozenset({"cli", "vscode", "spindle"})
_INTERACTIVE_CUSTOM = frozenset({"atlas", "chatgpt"})
_SUBAGENT_TAGS = frozenset({"subagent", "subAgent", "sub_agent"})
_SUBAGENT_STRINGS = {"review": "subAgentReview", "compact": "subAgentCompact"}
_SUBAGENT_OBJECTS = {"thread_spawn": "subAgentThreadSpawn", "threadSpawn": "subAgentThreadSpawn", "other": "subAgentOther"}


class InvalidThreadQuery(ThreadStoreError, ValueError):
    """A list request the store cannot answer as asked (bad cursor, sort key, id filter...)."""


def classify_source(raw: object) -> tuple[str, bool]:
    """(ThreadSourceKind, interactive?) of a `session_meta.source` value as Codex or Spindle wrote it."""
    if raw is None or raw is msgspec.UNSET:
        return "vscode", True
    if isinstance(raw, str):
        return _STRING_SOURCES.get(raw, "unknown"), raw in _INTERACTIVE_STRINGS or raw in _INTERACTIVE_CUSTOM
    if isinstance(raw, dict) and len(raw) == 1:
        [(tag, value)] = raw.items()
        if tag in _SUBAGENT_TAGS:
            return _subagent_kind(value), False
        if tag == "custom":
            return "unknown", value in _INTERACTIVE_CUSTOM
    return "unknown", False


def _subagent_kind(value: object) -> str:
    if isinstance(value, str):
        return _SUBAGENT_STRINGS.get(value, "subAgentOther")
    if isinstance(value, dict) and len(value) == 1:
        return _SUBAGENT_OBJECTS.get(next(iter(value)), "subAgentOther")
    return "subAgent"


@dataclass(frozen=True, kw_only=True)
class ThreadEntry:
    """One thread as the index lists it."""

    id: str
    path: str
    created_at: str
    updated_at: str
    cwd: str
    preview: str
    model_provider: str
    archived: bool
    forked_from_id: str | None = None
    name: str | None = None
    source_kind: str = "unknown"


@dataclass(frozen=True)
class ThreadPage:
    entries: list[ThreadEntry]
    next_cursor: str | None
    backwards_cursor: str | None = None


@dataclass(frozen=True)
class SqlDialect:
    """How `ThreadQuery.select` spells its SQL for one database: the parameter mark, a false
    condition, a case-insensitive substring test of `title` (`param` is the folded term), the table."""

    param: str = "?"
    false: str = "0"
    contains: str = "instr(spindle_fold({title}), {param}) > 0"
    table: str = "threads"


SQLITE = SqlDialect()
POSTGRES = SqlDialect(param="%s", false="false", contains="strpos(lower({title}), {param}) > 0")


ENTRY_COLUMNS = "id, path, created_at, updated_at, cwd, preview, model_provider, archived, forked_from_id, name, source_kind"


def entry_of(row: Sequence[object]) -> ThreadEntry:
    """A `ThreadEntry` from a row of `ENTRY_COLUMNS`."""
    tid, path, created, updated, cwd, preview, provider, archived, forked, name, kind = row
    return ThreadEntry(
        id=str(tid), path=str(path), created_at=str(created), updated_at=str(updated), cwd=str(cwd),
        preview=str(preview), model_provider=str(provider), archived=bool(archived),
        forked_from_id=str(forked) if forked else None, name=str(name) if name is not None else None,
        source_kind=str(kind),
    )


def _ids(values: Sequence[str] | None, what: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise InvalidThreadQuery(f"{what} must be a list of thread ids, not a string")
    if len(values) > MAX_ID_FILTER:
        raise InvalidThreadQuery(f"{what} holds {len(values)} ids; at most {MAX_ID_FILTER} are allowed")
    try:
        return tuple(dict.fromkeys(parse_thread_id(v) for v in values))
    except ValueError as exc:
        raise InvalidThreadQuery(f"{what}: {exc}") from None


def _strings(values: str | Sequence[str] | None) -> tuple[str, ...]:
    if values is None:
        return ()
    return (values,) if isinstance(values, str) else tuple(values)


@dataclass(frozen=True, kw_only=True)
class ThreadQuery:
    """A page of the thread list, filtered and sorted; validated (InvalidThreadQuery) when made.

    `search_term`: case-insensitive substring of the title (the name, else the preview).
    `cwd`: one path or several, matched exactly. `model_providers`: empty means all.
    `source_kinds`: ThreadSourceKind values, empty means the interactive sources (`subAgent`
    stands for every sub-agent kind). `included_ids`: None is unrestricted, empty matches nothing.
    `use_state_db_only`: answer from the index without reconciling it with the files first.
    `section`: only threads in that section (so none); None: every thread, all unsectioned.
    """

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    archived: bool = False
    search_term: str | None = None
    cwd: str | Sequence[str] | None = None
    model_providers: Sequence[str] = ()
    source_kinds: Sequence[str] = ()
    sort_key: str = "created_at"
    sort_direction: str = "desc"
    included_ids: Sequence[str] | None = None
    excluded_ids: Sequence[str] = ()
    use_state_db_only: bool = False
    section: str | None = None
    position: tuple[str, str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise InvalidThreadQuery(f"limit must be at least 1, got {self.limit}")
        if self.sort_key not in SORT_KEYS:
            raise InvalidThreadQuery(f"sort key {self.sort_key!r} is not supported; use one of {', '.join(SORT_KEYS)}")
        if self.sort_key == "section_position" and self.section is None:
            raise InvalidThreadQuery("section-position sorting requires a section filter")
        if self.sort_direction not in SORT_DIRECTIONS:
            raise InvalidThreadQuery(f"sort direction {self.sort_direction!r} is not one of {', '.join(SORT_DIRECTIONS)}")
        unknown = [kind for kind in _strings(self.source_kinds) if kind not in SOURCE_KINDS]
        if unknown:
            raise InvalidThreadQuery(f"unknown source kind {unknown[0]!r}; use any of {', '.join(SOURCE_KINDS)}")
        cwd = _strings(self.cwd)
        object.__setattr__(self, "cwd", cwd if self.cwd is not None else None)
        object.__setattr__(self, "model_providers", _strings(self.model_providers))
        object.__setattr__(self, "source_kinds", _strings(self.source_kinds))
        object.__setattr__(self, "included_ids", _ids(self.included_ids, "included thread ids"))
        object.__setattr__(self, "excluded_ids", _ids(self.excluded_ids, "excluded thread ids") or ())
        object.__setattr__(self, "search_term", self.search_term or None)
        object.__setattr__(self, "position", decode_thread_cursor(self.cursor, self.sort_key) if self.cursor else None)

    @property
    def reconciles(self) -> bool:
        """Whether the index is reconciled with the files first (Codex answers id filters from its index)."""
        return not self.use_state_db_only and self.included_ids is None

    def kinds(self) -> frozenset[str] | None:
        """The source kinds listed (`subAgent` stands for every sub-agent kind); None: the interactive sources."""
        if not self.source_kinds:
            return None
        return frozenset(k for s in self.source_kinds for k in ((s, *SUBAGENT_KINDS) if s == "subAgent" else (s,)))

    def select(self, dialect: SqlDialect | None = None) -> tuple[str, list[object]]:
        """The SQL (one page plus one row, to know if there is more) and its arguments, for the
        SQLite index (or another `dialect`: PostgreSQL's for the PostgreSQL store)."""
        d = dialect or SQLITE
        where: list[str] = [f"archived = {d.param}"]
        args: list[object] = [int(self.archived)]
        if self.section is not None:
            where.append(d.false)  # no thread is in a section
        kinds = self.kinds()
        if kinds is not None:
            where.append(_in("source_kind", len(kinds), d))
            args += sorted(kinds)
        else:
            where.append("interactive = 1")
        for column, values in (("model_provider", self.model_providers), ("cwd", self.cwd), ("id", self.included_ids)):
            if values is not None and (values or column == "id"):
                where.append(_in(column, len(values), d))
                args += values
        if self.excluded_ids:
            where.append("NOT " + _in("id", len(self.excluded_ids), d))
            args += self.excluded_ids
        if self.search_term:
            where.append(d.contains.format(title="CASE WHEN coalesce(name, '') <> '' THEN name ELSE preview END",
                                           param=d.param))
            args.append(self.search_term.casefold())
        order = "DESC" if self.sort_direction == "desc" else "ASC"
        column = _SORT_COLUMNS[self.sort_key]
        if self.position is not None:
            where.append(f"({column}, id) {'<' if order == 'DESC' else '>'} ({d.param}, {d.param})")
            args += self.position
        sql = (f"SELECT {ENTRY_COLUMNS} FROM {d.table} WHERE {' AND '.join(where)}"
               f" ORDER BY {column} {order}, id {order} LIMIT {d.param}")
        return sql, [*args, self.limit + 1]

    def accepts(self, entry: ThreadEntry, *, interactive: bool) -> bool:
        """Whether `entry` passes the filters (what `select`'s WHERE says, for a store in memory)."""
        kinds = self.kinds()
        title = entry.name or entry.preview
        return (
            entry.archived == self.archived and self.section is None
            and (entry.source_kind in kinds if kinds is not None else interactive)
            and (not self.model_providers or entry.model_provider in self.model_providers)
            and (not self.cwd or entry.cwd in self.cwd)
            and (self.included_ids is None or entry.id in self.included_ids)
            and entry.id not in self.excluded_ids
            and (not self.search_term or self.search_term.casefold() in title.casefold())
            and (self.position is None or self._after(entry))
        )

    def sort_value(self, entry: ThreadEntry) -> tuple[str, str]:
        return (entry.created_at if _SORT_COLUMNS[self.sort_key] == "created_at" else entry.updated_at, entry.id)

    def _after(self, entry: ThreadEntry) -> bool:
        assert self.position is not None
        value = self.sort_value(entry)
        return value < self.position if self.sort_direction == "desc" else value > self.position

    def page(self, rows: Sequence[Sequence[object]]) -> ThreadPage:
        """The page of `rows` (the result of `select`), with its cursors."""
        entries = [entry_of(row) for row in rows[: self.limit]]
        if not entries:
            return ThreadPage([], None, None)
        more = len(rows) > self.limit
        return ThreadPage(
            entries,
            encode_thread_cursor(self.sort_key, entries[-1]) if more else None,
            encode_thread_cursor(self.sort_key, entries[0]),
        )


def _in(column: str, n: int, d: SqlDialect) -> str:
    return f"{column} IN ({', '.join([d.param] * n)})" if n else d.false


def encode_thread_cursor(sort_key: str, entry: ThreadEntry) -> str:
    value = entry.created_at if sort_key == "created_at" else entry.updated_at
    return encode_cursor(sort_key, value, entry.id)


def decode_thread_cursor(cursor: str, sort_key: str) -> tuple[str, str]:
    """(key value, thread id) of a cursor made for `sort_key`; InvalidThreadQuery otherwise."""
    try:
        key, value, tid = decode_cursor(cursor, tuple[str, str, str])
    except InvalidCursor as exc:
        raise InvalidThreadQuery(str(exc)) from None
    if key != sort_key:
        raise InvalidThreadQuery(f"invalid cursor {cursor!r}: it was made for sort key {key}, not {sort_key}")
    return value, tid
