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


def test_score_options_are_declared_once_in_score_config():
    """The click options, a spec's keys and Beam's --vigil_* view all come from ScoreConfig."""
    from dataclasses import fields

    import pytest

    from vigil.jobs.commands import score
    from vigil.jobs.specs import allowed_options
    from vigil.models.config import ConfigError
    from vigil.pipeline.config import ScoreConfig
    from vigil.pipeline.options import VigilOptions
    names = {f.name for f in fields(ScoreConfig)}
    assert {p.name for p in score.params} - {"config", "no_report", "fail_on_dq"} == names
    assert allowed_options("score") == names - {"inputs", "registry", "name", "output", "run_id", "overwrite"}
    beam = VigilOptions(["--vigil_batch_size=7"]).get_all_options(retain_unknown_options=False)
    assert {k[len("vigil_"):] for k in beam if k.startswith("vigil_")} == names
    for bad, flag in [({"batch_size": 0}, "--batch-size 0: must be >= 1"),
                      ({"target_fpr": 0.5}, "--target-fpr 0.5: must be < 0.5"),
                      ({"format": "xml"}, "--format 'xml': expected one of auto, ")]:
        with pytest.raises(ConfigError, match=flag):
            ScoreConfig(inputs=("x",), registry="r", name="n", output="o", **bad)


def test_train_options_are_declared_once_in_the_train_configs():
    from dataclasses import fields

    from vigil.jobs.commands import train
    from vigil.jobs.specs import allowed_options
    from vigil.jobs.train_config import TrainJobConfig
    from vigil.models.config import TrainConfig
    declared = {f.name for cls in (TrainJobConfig, TrainConfig) for f in fields(cls) if f.metadata}
    assert {p.name for p in train.params} - {"config"} == declared
    assert allowed_options("train") == declared - {"inputs", "registry", "name"}
