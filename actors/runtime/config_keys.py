"""The config schema as key paths: which keys exist, what type each holds, what a typo meant.

The known keys are the `Config` struct's fields (recursively: model providers, MCP servers,
projects) plus `CODEX_ONLY_KEYS`, the real Codex's keys Spindle does not use. Nothing here reads
files: `config_layers` and `config_write` use it on data already read.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

from spindle.protocol.config import CODEX_ONLY_KEYS, Config

ANY = object()
"""A type under which every key is accepted (a Codex-only key, `Any`)."""


class KeyPathError(ValueError):
    """A key path that does not parse (empty, an empty segment, an unterminated quote)."""


def parse_key_path(text: str) -> list[str]:
    """`a.b."c.d"` into `["a", "b", "c.d"]`: dots split, double quotes quote a segment (with `\\`
    escaping inside them), as Codex's config writer reads a keyPath."""
    text = text.strip()
    if not text:
        raise KeyPathError("keyPath must not be empty")
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise KeyPathError("unterminated quoted keyPath segment")
    parts.append("".join(current))
    if any(not p for p in parts):
        raise KeyPathError("keyPath segments must not be empty")
    return parts


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: tables merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def dotted(path: list[str]) -> str:
    """A key path as text, quoting segments that hold a dot (`projects."/p/w.x".trust_level`)."""
    return ".".join(f'"{p}"' if "." in p or not p else p for p in path)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A Struct's field types, resolved once per class (resolving compiles every annotation)."""
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None) and a is not msgspec.UnsetType]
        if len(args) == 1:
            return args[0]
    return tp


def child_type(tp: Any, key: str) -> Any | None:
    """The type under `key` of a value of type `tp`: ANY when anything goes, None for an unknown key."""
    tp = _strip_optional(tp)
    if tp is ANY or tp is Any:
        return ANY
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if key in tp.__struct_fields__:
            return _hints(tp)[key]
        if key in CODEX_ONLY_KEYS.get(tp, ()):
            return ANY
        return None
    if get_origin(tp) is dict:
        return get_args(tp)[1]
    return None  # a scalar or a list has no keys


def known_keys(tp: Any) -> list[str]:
    tp = _strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [*tp.__struct_fields__, *CODEX_ONLY_KEYS.get(tp, ())]
    return []


def suggestion(key: str, tp: Any) -> str | None:
    """The known key `key` is probably a typo of, if one is close."""
    close = difflib.get_close_matches(key, known_keys(tp), n=1, cutoff=0.7)
    return close[0] if close else None


def unknown_key_message(path: list[str], tp: Any) -> str:
    hint = suggestion(path[-1], tp)
    text = f"unknown config key `{dotted(path)}`"
    return f"{text}; did you mean `{dotted([*path[:-1], hint])}`?" if hint else text


def type_at(path: list[str], root: Any = Config) -> Any | None:
    """The type a key path holds (ANY below a Codex-only key), or None if the path is unknown."""
    tp: Any = root
    for key in path:
        tp = child_type(tp, key)
        if tp is None:
            return None
        if tp is ANY:
            return ANY
    return tp


def unknown_keys(data: Mapping[str, Any], tp: Any = Config, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """Messages for each key of `data` the schema does not know (with a "did you mean")."""
    for key, value in data.items():
        sub = child_type(tp, key)
        path = [*prefix, key]
        if sub is None:
            if known_keys(tp):  # a struct: the key is a typo or unknown; a dict key is a name
                yield unknown_key_message(path, tp)
            continue
        if prefix == () and key == "profiles" and isinstance(value, dict):
            for name, profile in value.items():
                if isinstance(profile, dict):
                    yield from unknown_keys(profile, Config, (key, name))
        elif sub is not ANY and isinstance(value, dict):
            yield from unknown_keys(value, sub, tuple(path))


def allowed_values(tp: Any) -> list[str] | None:
    """The values a Literal (optionally nullable) type allows, sorted; None for other types."""
    tp = _strip_optional(tp)
    if get_origin(tp) is Literal:
        return sorted(str(v) for v in get_args(tp))
    return None


def failing_path(data: Any, tp: Any, pattern: list[str]) -> list[str]:
    """The concrete key path of a validation error whose msgspec path (`pattern`) hides dict keys
    as `[...]`: each such key is found by validating the entries one by one."""
    path: list[str] = []
    for segment in pattern:
        tp = _strip_optional(tp)
        if segment == "[...]" and isinstance(data, dict) and get_origin(tp) is dict:
            value_tp = get_args(tp)[1]
            for key, value in data.items():
                try:
                    msgspec.convert(value, value_tp)
                except msgspec.ValidationError:
                    path.append(str(key))
                    data, tp = value, value_tp
                    break
            else:
                return path
            continue
        if segment.startswith("["):  # a list index: the list is the key
            return path
        sub = child_type(tp, segment)
        if sub is None or not isinstance(data, dict):
            return path
        path.append(segment)
        data, tp = data.get(segment), sub
    return path


def error_pattern(exc: msgspec.ValidationError) -> list[str]:
    """The segments of msgspec's error path: `$.a[...].b[0]` → ["a", "[...]", "b", "[0]"]."""
    text = str(exc)
    marker = " - at `$"
    if marker not in text:
        return []
    raw = text.rsplit(marker, 1)[1].rstrip("`")
    return re.findall(r"\[[^\]]*\]|[^.\[]+", raw)


def problem_of(exc: msgspec.ValidationError) -> str:
    return str(exc).rsplit(" - at `$", 1)[0]
