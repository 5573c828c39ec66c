"""vigil runs no one's code: unsafe models, specs and paths are refused, resources capped."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import tf_keras as keras
from click.testing import CliRunner

from tests import helpers
from tests.reliability.test_models import copy_registry, republish
from vigil.jobs.cli import cli
from vigil.models import registry

REPO = Path(__file__).resolve().parents[2]


def _evil_keras(tmp_path: Path, marker: Path, how: str) -> bytes:
    """A .keras file whose loading would run code that creates ``marker``."""
    x = keras.Input((2,))
    model = keras.Model(x, keras.layers.Lambda(lambda t: t * 2)(x))
    path = tmp_path / "evil.keras"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    layer = config["config"]["layers"][1]
    if how == "lambda":
        layer["config"]["function"] = {"class_name": "__lambda__",
                                       "config": {"code": f"open('{marker}', 'w').write('x')"}}
    else:   # a layer that claims to live in a module outside the allowlist
        layer.update({"module": "os", "class_name": "system",
                      "config": {"command": f"touch {marker}"}})
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return path.read_bytes()


@pytest.mark.parametrize("how,named", [("lambda", "Lambda"), ("module", "os")])
def test_planted_model_is_refused_and_its_code_never_runs(features_registry, tmp_path, how, named):
    marker = tmp_path / "pwned"
    reg = copy_registry(features_registry["registry"], tmp_path)
    v = republish(reg, "cardio", {"dae.keras": _evil_keras(tmp_path, marker, how)})
    registry.promote(reg, "cardio", v)
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(tmp_path / "in", x[:20], y[:20])
    res = helpers.score_cli({"registry": reg, "name": "cardio"}, [f"{tmp_path}/in/*.parquet"],
                            tmp_path / "out")
    assert res.exit_code == 1 and named in res.output and f"cardio/{v}" in res.output
    assert "dae.keras" in res.output and "\n" not in res.output.strip()
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The previous version still scores, and its run balances.
    registry.rollback(reg, "cardio")
    res = helpers.score_cli({"registry": reg, "name": "cardio"}, [f"{tmp_path}/in/*.parquet"],
                            tmp_path / "out")
    assert res.exit_code == 0, res.output
    helpers.check_invariant(f"{tmp_path}/out/run1", sorted(str(p) for p in (tmp_path / "in").iterdir()))


def test_no_pickle_anywhere_in_the_product():
    for package in ("models", "pipeline", "jobs", "schemas"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            unsafe = r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b"
            assert not re.search(unsafe, text, re.M), path
            for call in re.findall(r"np\.load\([^)]*\)", text):
                assert "allow_pickle=False" in call, (path, call)


def _spec(tmp_path: Path, body: str) -> Path:
    spec = tmp_path / "job.yaml"
    spec.write_text(body)
    return spec


def _run_spec(spec: Path):
    return CliRunner().invoke(cli, ["run", str(spec), "--date", "2026-11-24"])


@pytest.mark.parametrize("key,value", [
    ("inputs", "['{root}/../../etc/*.parquet']"),
    ("registry", "'{root}/models/../../../var/lib'"),
    ("output", "'{root}/link-out/runs'"),
])
def test_spec_paths_cannot_escape_their_roots(tmp_path, key, value):
    root = tmp_path / "jobroot"
    (root / "models").mkdir(parents=True)
    (root / "link-out").symlink_to(tmp_path.parent)       # a symlink leading out of the root
    fields = {"inputs": f"['{root}/in/*.parquet']", "registry": f"'{root}/models'",
              "output": f"'{root}/runs'"}
    fields[key] = value.format(root=root)
    spec = _spec(tmp_path, f"kind: score\nname: m\nroots: ['{root}']\n"
                 + "".join(f"{k}: {v}\n" for k, v in fields.items()))
    res = _run_spec(spec)
    assert res.exit_code == 2, res.output
    assert f"{key} '" in res.output and "outside the allowed roots" in res.output
    assert not (root / "runs").exists()


def test_spec_paths_default_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path, "kind: score\nname: m\ninputs: [in/*.parquet]\nregistry: /\noutput: runs\n")
    res = _run_spec(spec)
    assert res.exit_code == 2 and "registry '/'" in res.output


def test_spec_size_and_depth_limits(tmp_path):
    res = _run_spec(_spec(tmp_path, "description: '" + "x" * 70_000 + "'\n"))
    assert res.exit_code == 2 and "larger than" in res.output
    res = _run_spec(_spec(tmp_path, "kind: score\noptions: " + "{a: " * 10 + "1" + "}" * 10 + "\n"))
    assert res.exit_code == 2 and "nested deeper" in res.output


def test_matched_file_count_is_capped(features_registry, tmp_path):
    x, y = features_registry["x"], features_registry["y"]
    files = helpers.table_shards(tmp_path / "in", x[:40], y[:40], shards=4)
    res = helpers.score_cli(features_registry, [f"{tmp_path}/in/*.parquet"], tmp_path / "out",
                            "--max-files", "3")
    assert res.exit_code == 2 and "more than 3 files" in res.output and "--max-files" in res.output
    assert not (tmp_path / "out").exists()
    res = helpers.score_cli(features_registry, [f"{tmp_path}/in/*.parquet"], tmp_path / "out",
                            "--max-files", "4")
    assert res.exit_code == 0, res.output
    helpers.check_invariant(f"{tmp_path}/out/run1", sorted(files))
