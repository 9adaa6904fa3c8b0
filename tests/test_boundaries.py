"""Architecture rules that keep the protocol cores testable and the UI honest."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "p2pchat"


def imports_of(path: Path, package: str = "p2pchat.x") -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_package(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts if parts[-1] == "__init__" else parts[:-1])


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, set[str]]:
    bad: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        hits = {
            name
            for name in imports_of(path, module_package(path))
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        }
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


def test_core_is_sans_io() -> None:
    forbidden = ("asyncio", "socket", "selectors", "time", "textual", "p2pchat.net", "p2pchat.node")
    assert offenders("core", forbidden) == {}


def test_dht_core_is_sans_io() -> None:
    if not (PACKAGE / "dht").exists():
        return
    forbidden = ("asyncio", "socket", "time", "textual", "p2pchat.net", "p2pchat.node")
    assert offenders("dht", forbidden) == {}


def test_ui_never_imports_net() -> None:
    if not (PACKAGE / "ui").exists():
        return
    assert offenders("ui", ("p2pchat.net",)) == {}


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import asyncio\nfrom ..net import endpoint\nfrom .. import net\n")
    found = imports_of(sample, "p2pchat.ui")
    assert {"asyncio", "p2pchat.net", "p2pchat.net.endpoint"} <= found
