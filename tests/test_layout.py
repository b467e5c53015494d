"""The layout: one `spindle` namespace over the card's folders, rooms that import only downward,
no import cycle, no module past ~500 lines, and a wheel with nothing generic at the top level."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"actors": "spindle.actors", "protocol": "spindle.protocol", "persistence": "spindle.persistence"}
TOP_PACKAGE_DIR = ROOT / "actors" / "api"
MAX_LINES = 500

ALLOWED: dict[str, set[str]] = {
    "spindle.protocol": set(),
    "spindle.persistence": {"spindle.protocol"},
    "spindle.actors.runtime": {"spindle.protocol", "spindle.persistence"},
    "spindle.actors.appserver": {"spindle.protocol", "spindle.persistence", "spindle.actors.runtime"},
    "spindle.actors.testing": {"spindle.protocol", "spindle.persistence", "spindle.actors.runtime"},
    "spindle.actors.loadtest": {
        "spindle.protocol", "spindle.persistence", "spindle.actors.runtime", "spindle.actors.testing",
    },
    "spindle.actors.cli": {
        "spindle.protocol", "spindle.persistence", "spindle.actors.runtime", "spindle.actors.appserver",
        "spindle.actors.testing", "spindle.actors.loadtest",
    },
    "spindle": {"spindle.protocol", "spindle.persistence", "spindle.actors.runtime", "spindle.actors.appserver"},
    "spindle.actors": set(),
}
"""Each room, and the rooms it may import (besides itself)."""
FORBIDDEN_THIRD_PARTY = {"spindle.protocol": {"trio", "httpx", "structlog", "h11"}}


def module_name(path: Path) -> str:
    if path.parent == TOP_PACKAGE_DIR:
        return "spindle"
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = sources()


def room_of(module: str) -> str:
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    raise AssertionError(f"{module} is in no room")


def imports(module: str, path: Path, *, top_level_only: bool) -> set[str]:
    """Modules `path` imports, relative imports resolved. With `top_level_only`, leave out imports
    inside functions and `if TYPE_CHECKING:` blocks (they cannot make an import cycle)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in MODULES else base)
            elif top_level_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            elif top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        visit([c for c in children if isinstance(c, ast.stmt | ast.excepthandler)])  # type: ignore[misc]
                if isinstance(node, ast.ExceptHandler):
                    visit(node.body)

    visit(tree.body)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_rooms_import_only_downward(module: str) -> None:
    room = room_of(module)
    for target in imports(module, MODULES[module], top_level_only=False):
        first = target.split(".")[0]
        assert first not in FOLDERS, f"{module} imports {target}: use the spindle.* name"
        assert first not in FORBIDDEN_THIRD_PARTY.get(room, set()), f"{module} ({room}) imports {target}"
        if first != "spindle":
            continue
        target_room = room_of(target)
        assert target_room == room or target_room in ALLOWED[room], (
            f"{module} ({room}) imports {target} ({target_room}); {room} may import only {sorted(ALLOWED[room])}"
        )


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_tests_import_spindle_by_its_installed_names(path: Path) -> None:
    """The repo root is on sys.path under pytest, so a bare `protocol.x` would load a second copy."""
    for target in imports(f"tests.{path.stem}", path, top_level_only=False):
        assert target.split(".")[0] not in FOLDERS, f"{path.name} imports {target}: use spindle.{target}"


def test_no_import_cycle() -> None:
    graph = {m: {t for t in imports(m, p, top_level_only=True) if t in MODULES} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it"


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p) for p in ROOT.glob("*/**/__init__.py") if p.parts[len(ROOT.parts)] in FOLDERS}
    assert set(config["packages"]) == packages
    assert config["package-dir"]["spindle"] == str(TOP_PACKAGE_DIR.relative_to(ROOT))


def test_the_public_api_is_importable() -> None:
    import spindle

    for name in ["open_runtime", "ForkSnapshot", "Lagged", "ThreadHandle", "TurnError", "UserInputOp",
                 "TaskCompleteEvent", "SettingsUpdate", "ThreadStoreError", "__version__", "serve", "ListenError"]:
        assert hasattr(spindle, name), name
    assert callable(spindle.ThreadHandle.interrupt)
    assert spindle.__version__ != "0+unknown"


def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: an in-tree build would leave build/ and egg-info behind
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, source / name)
    for name in FOLDERS:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("spindle-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"spindle", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "spindle/__init__.py" in names and "spindle/actors/runtime/thread.py" in names
    assert not any(name.startswith("spindle/actors/api/") for name in names)
