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


def test_net_stays_below_the_facade() -> None:
    """net/ owns sockets and tasks for the node; it never reaches up into it.  The
    control server gets a request handler and an event source from the owner."""
    above = ("p2pchat.node", "p2pchat.rpc", "p2pchat.remote", "p2pchat.owner", "p2pchat.cli")
    assert offenders("net", (*above, "p2pchat.ui")) == {}


def test_the_owner_composes_node_and_control_socket() -> None:
    """Node and rpc know nothing of the control socket; owner.py joins them."""
    store = sorted((PACKAGE / "store").glob("*.py"))
    assert store, "the store package moved"
    for path in [PACKAGE / "node.py", PACKAGE / "rpc.py", *store]:
        found = imports_of(path, "p2pchat")
        assert not any(
            i.startswith(("p2pchat.net.control", "p2pchat.owner", "p2pchat.remote")) for i in found
        ), path.name
    assert "p2pchat.net.control" in imports_of(PACKAGE / "owner.py", "p2pchat")


def module_graph() -> dict[str, set[str]]:
    """Module -> the p2pchat modules it imports (anywhere in the file)."""
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in imports_of(path, module_package(path)):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported not in (name, "p2pchat"):
                deps.add(imported)
        graph[name] = deps
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycles_below_the_ui() -> None:
    """Layers import downwards only (the UI's screens and app are its own business)."""
    graph = {
        name: {d for d in deps if not d.startswith("p2pchat.ui")}
        for name, deps in module_graph().items()
        if not name.startswith("p2pchat.ui")
    }
    assert cycle_in(graph) is None


def test_the_cycle_rule_catches_a_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import asyncio\nfrom ..net import endpoint\nfrom .. import net\n")
    found = imports_of(sample, "p2pchat.ui")
    assert {"asyncio", "p2pchat.net", "p2pchat.net.endpoint"} <= found
