"""`vigil train --calibration-input`: thresholds from curated normals, training on the rest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli
from vigil.models import registry


@pytest.fixture(scope="module")
def cardio(tmp_path_factory):
    """Contaminated training rows (normal and anomalous cardio, unlabelled) and curated normals."""
    root = tmp_path_factory.mktemp("calibration-input")
    x, y = helpers.cardio()
    rng = np.random.default_rng(0)
    normal, anomalous = rng.permutation(np.flatnonzero(y == 0)), np.flatnonzero(y == 1)
    train = np.r_[normal[:900], anomalous]                  # 176 anomalies in 1,076 rows
    helpers.table_shards(root / "train", x[train], prefix="train")
    helpers.table_shards(root / "curated", x[normal[900:1300]], prefix="curated")
    return {"root": root, "anomalies": x[anomalous], "unseen_normals": x[normal[1300:]]}


def _flag_rate(bundle, rows: np.ndarray) -> float:
    scores = bundle.score_raw(bundle.scorer(), rows)
    return float(np.mean(bundle.calibration.anomaly_score(scores) > bundle.calibration.threshold(0.01)))


def _train(root: Path, name: str, *extra: str):
    return CliRunner().invoke(cli, [
        "train", "--input", str(root / "train" / "*.parquet"), "--registry", str(root / "reg"),
        "--name", name, "--epochs", "4", "--members", "1", "--no-promote", *extra])


def test_curated_calibration_sets_thresholds_and_gates(cardio):
    root = cardio["root"]
    plain = _train(root, "plain")
    curated = _train(root, "curated", "--calibration-input", str(root / "curated" / "*.parquet"))
    assert plain.exit_code in (0, 5) and curated.exit_code in (0, 5), plain.output + curated.output
    a, b = (registry.load(str(root / "reg"), name, "0001") for name in ("plain", "curated"))
    training = b.manifest["training"]
    assert training["calibration_inputs"] == [str(root / "curated" / "*.parquet")]
    sizes = training["split_sizes"]
    # Every training row trains or stops training; the 400 curated rows hold out and calibrate.
    assert sizes["train"] + sizes["validation"] == 1076 and "calibration_a" not in sizes
    assert (sizes["calibration_input_holdout"], sizes["calibration_input_calibration_a"],
            sizes["calibration_input_calibration_b"]) == (100, 150, 150)
    assert b.manifest["metrics"]["validation"]["rows"] == 100
    # Contaminated calibration rows put the 1% threshold among the anomalies, so almost
    # none of them is flagged; curated normal rows put it at the normal tail, where it
    # flags several times more of them and still few normals it has never seen.
    assert _flag_rate(b, cardio["anomalies"]) > 2 * _flag_rate(a, cardio["anomalies"]) + 0.05
    assert _flag_rate(b, cardio["unseen_normals"]) <= 0.03


@pytest.mark.parametrize("make, message", [
    (lambda x, d: helpers.table_shards(d, x[:200], prefix="few"), "it needs at least 267"),
    (lambda x, d: helpers.table_shards(d, x[:400, :5], prefix="narrow"), "missing column 'f5'"),
    (lambda x, d: helpers.image_shards(d, *helpers.mnist(20)), "image records"),
])
def test_unusable_calibration_input_stops_before_anything_is_written(cardio, tmp_path, make, message):
    x, _ = helpers.cardio()
    make(x, tmp_path / "cal")
    res = _train(cardio["root"], "refused", "--calibration-input", str(tmp_path / "cal" / "*"))
    assert res.exit_code != 0 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert registry.list_versions(str(cardio["root"] / "reg"), "refused", complete_only=False) == []


def test_spec_calibration_inputs_are_dated_and_confined(tmp_path):
    from vigil.jobs.specs import SpecError, load_spec
    spec = tmp_path / "train.yaml"
    spec.write_text(f"kind: train\ninputs: ['{tmp_path}/t/*.parquet']\nregistry: {tmp_path}/r\n"
                    f"name: m\noptions: {{calibration_inputs: '{tmp_path}/cal/{{date}}/*.parquet'}}\n"
                    f"roots: ['{tmp_path}']\n")
    job = load_spec(str(spec), "2026-11-24")
    assert job.options["calibration_inputs"] == [f"{tmp_path}/cal/2026-11-24/*.parquet"]
    spec.write_text(spec.read_text().replace(f"'{tmp_path}/cal/", "'/etc/cal/"))
    with pytest.raises(SpecError, match="options.calibration_inputs"):
        load_spec(str(spec), "2026-11-24")
