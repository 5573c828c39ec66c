"""The house rules the code itself can check: layers import one way, no import circles,
exit codes defined once, and ``models`` usable without Beam, click or great-expectations."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "models", "pipeline", "jobs")     # each may import only those before it


def _modules() -> dict[str, Path]:
    out = {}
    for layer in LAYERS:
        for path in (REPO / layer).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(("vigil", *(parts[:-1] if parts[-1] == "__init__" else parts)))
            out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_layers_import_one_way_and_models_needs_no_beam():
    for name, path in _modules().items():
        layer = name.split(".")[1]
        allowed = LAYERS[:LAYERS.index(layer) + 1]
        for imported in _imports(path):
            if imported.startswith("vigil."):
                assert imported.split(".")[1] in allowed, f"{name} imports {imported}"
            if layer in ("schemas", "models"):
                assert imported.split(".")[0] not in ("apache_beam", "click", "great_expectations"), \
                    f"{name} imports {imported}"


def test_no_import_circles():
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name
                    and not name.startswith(m + ".")}           # a package's own __init__
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]) \
                if nxt in trail else f"import circle through {nxt}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_exit_codes_are_defined_once():
    defined = {}
    for name, path in _modules().items():
        for match in re.finditer(r"^(EXIT_\w+)\s*=", path.read_text(), re.MULTILINE):
            defined.setdefault(match.group(1), []).append(name)
    assert defined and all(where == ["vigil.jobs.errors"] for where in defined.values()), defined
