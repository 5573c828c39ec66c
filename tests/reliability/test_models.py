"""Damaged model versions stop a run before any input is read; the pointer is read once.

Runs that go ahead end with the run invariant; runs that must not start are checked to
have written nothing and never listed an input.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import helpers
from vigil.models import registry


def copy_registry(src: str, dst: Path) -> str:
    shutil.copytree(src, dst / "reg")
    return str(dst / "reg")


def republish(reg: str, name: str, replace: dict[str, bytes] | None = None, edit=None) -> str:
    """Publish a copy of version 0001 as a new version, optionally with files replaced or
    the manifest changed in place by ``edit``."""
    d1 = Path(registry.version_dir(reg, name, "0001"))
    manifest = json.loads((d1 / "manifest.json").read_text())
    if edit:
        edit(manifest)

    def write_files(directory):
        Path(directory).mkdir(parents=True)
        out = {}
        for file_name in manifest["files"]:
            data = (replace or {}).get(file_name) or (d1 / file_name).read_bytes()
            Path(directory, file_name).write_bytes(data)
            out[file_name] = hashlib.sha256(data).hexdigest()
        return out
    return registry.publish(reg, name, write_files,
                            {k: v for k, v in manifest.items() if k not in ("version", "files")})


@pytest.fixture
def inputs(features_registry, tmp_path):
    x, y = features_registry["x"], features_registry["y"]
    return helpers.table_shards(tmp_path / "in", x[:60], y[:60])


def _refuses_before_reading(reg, inputs, tmp_path, monkeypatch, *expected):
    import vigil.pipeline.run as run
    monkeypatch.setattr(run, "match_inputs", lambda *a: pytest.fail("inputs were listed"))
    res = helpers.score_cli(reg, [str(tmp_path / "in" / "*.parquet")], tmp_path / "out")
    assert res.exit_code != 0
    line = res.output.strip()
    assert "\n" not in line and line.startswith("vigil: error:"), line
    for text in expected:
        assert text in line, (text, line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage,file_name,problem", [
    ("no_marker", "COMPLETE", "incomplete version"),
    ("empty_marker", "COMPLETE", "incomplete version"),
    ("tampered_manifest", "manifest.json", "checksum does not match the COMPLETE marker"),
    ("checksum", "dae.keras", "sha256 mismatch"),
    ("missing", "vae_decoder.keras", "file is missing"),
    ("truncated", "vae_encoder.keras", "sha256 mismatch"),
])
def test_damaged_version_stops_the_run_before_inputs(features_registry, inputs, tmp_path, monkeypatch,
                                                     damage, file_name, problem):
    reg = copy_registry(features_registry["registry"], tmp_path)
    d = Path(registry.version_dir(reg, "cardio", "0001"))
    if damage == "no_marker":
        (d / "COMPLETE").unlink()
    elif damage == "empty_marker":          # fails closed: no check is skipped
        (d / "COMPLETE").write_text("")
    elif damage == "tampered_manifest":     # still valid JSON, thresholds loosened
        manifest = json.loads((d / file_name).read_text())
        manifest["metrics"]["tampered"] = True
        (d / file_name).write_text(json.dumps(manifest))
    elif damage == "checksum":
        with open(d / file_name, "ab") as f:
            f.write(b"x")
    elif damage == "missing":
        (d / file_name).unlink()
    else:
        data = (d / file_name).read_bytes()
        (d / file_name).write_bytes(data[: len(data) // 2])
    named = () if damage in ("no_marker", "empty_marker") else (file_name,)
    _refuses_before_reading({"registry": reg, "name": "cardio"}, inputs, tmp_path, monkeypatch,
                            "cardio/0001", problem, *named)


@pytest.mark.parametrize("pointer", ["3", '"0001"', "[1]", '{"version": 1}', '{"version": "../x"}',
                                     "{not json", ""])
def test_malformed_production_pointer_is_one_line_and_promote_repairs_it(
        features_registry, inputs, tmp_path, monkeypatch, pointer):
    reg = copy_registry(features_registry["registry"], tmp_path)
    path = Path(reg, "cardio", "production")
    path.write_text(pointer)
    _refuses_before_reading({"registry": reg, "name": "cardio"}, inputs, tmp_path, monkeypatch,
                            str(path), "not a production pointer")
    from click.testing import CliRunner

    from vigil.jobs.cli import cli
    listed = CliRunner().invoke(cli, ["models", "ls", "--registry", reg, "--name", "cardio"])
    assert listed.exit_code == 1 and "not a production pointer" in listed.output, listed.output
    assert len(listed.output.strip().splitlines()) == 1
    repaired = CliRunner().invoke(cli, ["models", "promote", "--registry", reg, "--name", "cardio",
                                        "--model-version", "1"])
    assert repaired.exit_code == 0, repaired.output
    assert registry.production_version(reg, "cardio") == "0001"


def test_truncated_keras_with_matching_checksum_is_refused(features_registry, inputs, tmp_path,
                                                           monkeypatch):
    reg = copy_registry(features_registry["registry"], tmp_path)
    d1 = Path(registry.version_dir(reg, "cardio", "0001"))
    data = (d1 / "dae.keras").read_bytes()
    v = republish(reg, "cardio", {"dae.keras": data[: len(data) // 2]})   # checksums agree
    registry.promote(reg, "cardio", v)
    _refuses_before_reading({"registry": reg, "name": "cardio"}, inputs, tmp_path, monkeypatch,
                            f"cardio/{v}", "dae.keras", "not a valid .keras archive")


def test_model_calibrated_with_another_png_encoder_stops_the_run(images_registry, inputs,
                                                                tmp_path, monkeypatch):
    """Image scores are adjusted for PNG size; an encoder that sizes differently is refused."""
    reg = copy_registry(images_registry["registry"], tmp_path)
    recorded = json.loads(Path(registry.version_dir(reg, "mnist", "0001"), "manifest.json")
                          .read_text())["calibration"]["encoder"]
    assert recorded["shape"] == [28, 28, 1] and len(recorded["bits"]) == 4

    def other_encoder(manifest):
        encoder = manifest["calibration"]["encoder"]
        encoder["encoder"] = "Pillow 99.0, zlib-ng 2.2"
        encoder["bits"] = [b * 1.03 for b in encoder["bits"]]     # packs 3% looser
    v = republish(reg, "mnist", edit=other_encoder)
    registry.promote(reg, "mnist", v)
    _refuses_before_reading({"registry": reg, "name": "mnist"}, inputs, tmp_path, monkeypatch,
                            f"mnist/{v}", "PNG-compressed size", "zlib-ng 2.2", "retrain")


def test_input_that_does_not_fit_the_model_stops_the_run(images_registry, inputs, tmp_path):
    res = helpers.score_cli(images_registry, [str(tmp_path / "in" / "*.parquet")], tmp_path / "out")
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "part-0.parquet" in line and "mnist/0001" in line
    assert "does not fit" in line and not (tmp_path / "out").exists()


def test_pointer_change_mid_run_keeps_the_version_resolved_at_start(features_registry, inputs,
                                                                     tmp_path, monkeypatch):
    import vigil.pipeline.readers as readers
    reg = copy_registry(features_registry["registry"], tmp_path)
    v2 = republish(reg, "cardio")
    real_decode = readers.decode_rows

    def promoting_decode(*args):
        if registry.production_version(reg, "cardio") != v2:
            registry.promote(reg, "cardio", v2)        # a release lands while we score
        return real_decode(*args)

    monkeypatch.setattr(readers, "decode_rows", promoting_decode)
    res = helpers.score_cli({"registry": reg, "name": "cardio"}, [str(tmp_path / "in" / "*.parquet")],
                            tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert registry.production_version(reg, "cardio") == v2
    scores, _, manifest = helpers.read_run(f"{tmp_path}/out/run1")
    assert set(scores.column("model_version").to_pylist()) == {"0001"}
    assert manifest["model"]["version"] == "0001"
    helpers.check_invariant(f"{tmp_path}/out/run1", sorted(inputs))


def test_two_trainings_at_once_get_distinct_complete_versions(features_registry, inputs, tmp_path):
    reg = str(tmp_path / "reg")
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(tmp_path / "train", x[y == 0][:300], y[y == 0][:300])
    cmd = [sys.executable, "-c", "from vigil.jobs.cli import main; main()", "train", "--input",
           str(tmp_path / "train" / "*.parquet"), "--registry", reg, "--name", "twin",
           "--epochs", "2", "--members", "2"]
    seen, stop = [], threading.Event()

    def watch_pointer():
        while not stop.is_set():
            try:
                v = registry.production_version(reg, "twin")
            except registry.RegistryError:
                v = None
            if v:
                seen.append((v, Path(registry.version_dir(reg, "twin", v), "COMPLETE").exists()))
            time.sleep(0.01)
    watcher = threading.Thread(target=watch_pointer)
    watcher.start()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    stop.set()
    watcher.join()
    assert all(p.returncode in (0, 5) for p in procs), outs
    assert registry.list_versions(reg, "twin") == ["0001", "0002"]
    assert all(complete for _, complete in seen), seen
    for v in ("0001", "0002"):
        assert len(registry.load(reg, "twin", v).members) == 2
        res = helpers.score_cli({"registry": reg, "name": "twin"}, [str(tmp_path / "in" / "*.parquet")],
                                tmp_path / "out", "--model-version", v, run_id=f"v{v}")
        assert res.exit_code == 0, res.output
        helpers.check_invariant(f"{tmp_path}/out/v{v}", sorted(inputs))


def test_model_output_that_is_not_finite_is_never_a_score(features_registry, inputs, tmp_path):
    import numpy as np
    import tf_keras as keras
    reg = copy_registry(features_registry["registry"], tmp_path)
    d1 = Path(registry.version_dir(reg, "cardio", "0001"))
    dae = keras.models.load_model(d1 / "dae.keras", compile=False, safe_mode=True)
    weights = dae.get_weights()
    weights[-1] = np.full_like(weights[-1], np.nan)     # a diverged model, promoted by hand
    dae.set_weights(weights)
    dae.save(tmp_path / "nan.keras")
    v = republish(reg, "cardio", {"dae.keras": (tmp_path / "nan.keras").read_bytes()})
    registry.promote(reg, "cardio", v)
    res = helpers.score_cli({"registry": reg, "name": "cardio"}, [str(tmp_path / "in" / "*.parquet")],
                            tmp_path / "out", "--max-bad-fraction", "1")
    assert res.exit_code == 0, res.output
    scores, dead, _ = helpers.read_run(f"{tmp_path}/out/run1")
    assert scores.num_rows == 0
    assert set(dead.column("reason").to_pylist()) == {"non_finite_score"}
    assert set(dead.column("stage").to_pylist()) == {"postprocess"}
    helpers.check_invariant(f"{tmp_path}/out/run1", sorted(inputs))


def test_training_does_not_compare_with_a_production_it_cannot_score(images_registry, tmp_path,
                                                                     caplog):
    """A production version calibrated on another PNG encoder has no FPR to measure here."""
    from types import SimpleNamespace

    from vigil.models.publishing import GatePolicy, gates
    reg = copy_registry(images_registry["registry"], tmp_path)
    bundle = registry.load(reg, "mnist", "0001")
    images, _ = helpers.mnist(60, offset=900)
    candidate = SimpleNamespace(preprocessing=bundle.preprocessing, calibration=bundle.calibration,
                                metrics={"finite": True, "validation": {"rows": 60, "fpr": {"0.01": 0.5}}})
    holdout = images[..., None]
    assert any("worse than production 0001" in f
               for f in gates(candidate, reg, "mnist", GatePolicy(), holdout, 600))

    def other_encoder(manifest):
        manifest["calibration"]["encoder"]["bits"][-1] += 800
    registry.promote(reg, "mnist", republish(reg, "mnist", edit=other_encoder))
    with caplog.at_level("WARNING", logger="vigil.train"):
        failures = gates(candidate, reg, "mnist", GatePolicy(), holdout, 600)
    assert not any("production" in f for f in failures), failures
    assert "not comparing with production 0002" in caplog.text and "PNG" in caplog.text
