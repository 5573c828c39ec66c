"""``vigil.models.Detector`` from Python: fit, score, save, load, without Beam, as the CLI does.

The API runs in a fresh interpreter, so that ``sys.modules`` shows what it imported; the
command line then trains on the same rows (same ids, same seed) and scores the same
records, and both must give identical scores and thresholds.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli

API_TABLE = """
import json, sys
import numpy as np, pandas as pd
from vigil.models import Detector
from tests import helpers
x, y = helpers.cardio()
cols = [f"f{j}" for j in range(x.shape[1])]
train = pd.DataFrame(x[y == 0][:600], columns=cols, index=[f"row-{i:05d}" for i in range(600)])
new = pd.DataFrame(x[-200:], columns=cols, index=[f"new-{i:05d}" for i in range(200)])
det = Detector(epochs=3).fit(train, target_fpr=0.01)
before = det.score(new)
assert before.index.equals(new.index) and list(before["id"]) == list(new.index)   # aligned with X
saved = det.save(sys.argv[1], "api")
loaded = Detector.load(sys.argv[1], "api")
after = loaded.score(new)
assert before.drop(columns=["model_version"]).equals(after.drop(columns=["model_version"]))
assert list(after["model_version"].unique()) == [saved.version]
after.to_parquet(sys.argv[2])
json.dump({"version": saved.version, "promoted": saved.promoted, "threshold": loaded.threshold(),
           "beam": sorted(m for m in sys.modules if m.startswith("apache_beam"))}, open(sys.argv[3], "w"))
"""

API_IMAGES = """
import json, sys
from vigil.models import Detector
from tests import helpers
images, labels = helpers.mnist(360)
keep = labels != 7
det = Detector(epochs=2).fit(images[keep][:300])
loaded = Detector.load(sys.argv[1], "digits", det.save(sys.argv[1], "digits").version)
ids = [f"img-{i:05d}" for i in range(40)]
scores = loaded.score(images[300:340], ids=ids)
assert list(scores.index) == list(range(40))
scores.to_parquet(sys.argv[2])
low = loaded.score(images[300:340], ids=ids, precision="bfloat16")
try:
    loaded.score(images[300:340], precision="float16")
    refused = ""
except ValueError as exc:
    refused = str(exc)
json.dump({"beam": sorted(m for m in sys.modules if m.startswith("apache_beam")), "refused": refused,
           "same_anomaly_score": bool((low["anomaly_score"] == scores["anomaly_score"]).all()),
           "elbo_rank": float(low["vae_elbo"].rank().corr(scores["vae_elbo"].rank()))},
          open(sys.argv[3], "w"))
"""


def _api(script: str, tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    out, info = tmp_path / "api-scores.parquet", tmp_path / "api.json"
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "reg"), str(out), str(info)],
                         cwd=repo, capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-3000:]
    return pd.read_parquet(out), json.loads(info.read_text())


def _cli_scores(registry: str, name: str, glob: str, out: Path, version: str = "0001") -> pd.DataFrame:
    res = CliRunner().invoke(cli, ["score", "--input", glob, "--registry", registry, "--name", name,
                                   "--model-version", version, "--output", str(out), "--run-id", "r",
                                   "--no-report"])
    assert res.exit_code == 0, res.output
    return helpers.read_run(str(out / "r"))[0].to_pandas()


def _same_scores(api: pd.DataFrame, cli_rows: pd.DataFrame) -> None:
    columns = [c for c in api.columns if c not in ("source", "run_id", "model_version")]
    assert list(api.columns) == [c for c in cli_rows.columns if c != "label"]
    a = api.sort_values("id").reset_index(drop=True)[columns]
    b = cli_rows.sort_values("id").reset_index(drop=True)[columns]
    assert a.drop(columns=["top_features"]).equals(b.drop(columns=["top_features"]))
    assert _plain(a["top_features"]) == _plain(b["top_features"])


def _plain(column) -> list:
    """top_features as lists of plain dicts (Parquet gives numpy arrays for positions)."""
    return [[{k: (None if v is None else [int(p) for p in v] if k == "position" else v)
              for k, v in item.items()} for item in row] for row in column]


def test_a_table_fits_scores_saves_and_loads_like_the_cli(tmp_path):
    api, info = _api(API_TABLE, tmp_path)
    assert info["beam"] == [], info["beam"]
    assert info["version"] == "0001" and info["promoted"]
    assert set(api["source"]) == {"memory"} and set(api["run_id"]) == {""}

    x, y = helpers.cardio()
    helpers.table_shards(tmp_path / "train", x[y == 0][:600], shards=1)
    helpers.table_shards(tmp_path / "new", x[-200:], shards=1, prefix="new")
    res = CliRunner().invoke(cli, ["train", "--input", str(tmp_path / "train" / "*.parquet"),
                                   "--registry", str(tmp_path / "cli-reg"), "--name", "cli", "--epochs", "3"])
    assert res.exit_code == 0, res.output
    from vigil.models import registry
    assert registry.load(str(tmp_path / "cli-reg"), "cli").calibration.threshold(0.01) == info["threshold"]
    glob = str(tmp_path / "new" / "*.parquet")
    _same_scores(api, _cli_scores(str(tmp_path / "cli-reg"), "cli", glob, tmp_path / "out-cli"))
    _same_scores(api, _cli_scores(str(tmp_path / "reg"), "api", glob, tmp_path / "out-api"))


def test_images_fit_score_save_and_load_without_beam(tmp_path):
    api, info = _api(API_IMAGES, tmp_path)
    assert info["beam"] == [], info["beam"]
    # bfloat16 lowers the VAE's decoder only: anomaly_score (the DAE's) keeps its bits.
    assert info["same_anomaly_score"] and info["elbo_rank"] > 0.999
    assert info["refused"] == "precision='float16': expected one of float32, bfloat16"
    assert len(api) == 40 and api["top_features"].map(lambda t: t[0]["position"] is not None).all()
    images, labels = helpers.mnist(360)
    helpers.image_shards(tmp_path / "new", images[300:340], labels[300:340], shards=2)
    cli_rows = _cli_scores(str(tmp_path / "reg"), "digits", str(tmp_path / "new" / "*.tfrecord"),
                           tmp_path / "out")
    _same_scores(api, cli_rows)
    assert set(cli_rows["model_version"]) == set(api["model_version"]) == {"0001"}


def test_bad_input_names_the_bad_value():
    import pytest

    from vigil.models.detector import as_records
    rows = np.ones((5, 3))
    rows[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"X row 2, column 'f1': nan is not finite"):
        as_records(rows, None, None)
    with pytest.raises(ValueError, match="images must be uint8"):
        as_records(np.zeros((2, 8, 8)), None, "image")
    with pytest.raises(ValueError, match="no column 'b'"):
        as_records(pd.DataFrame({"a": [1.0]}), None, "features", ["a", "b"])
    with pytest.raises(ValueError, match="column 'a' is .*, not numeric"):
        as_records(pd.DataFrame({"a": ["x"]}), None, None)
    with pytest.raises(ValueError, match="3 ids for 5 records"):
        as_records(np.ones((5, 3)), ["a", "b", "c"], None)
    with pytest.raises(ValueError, match="X has no feature columns"):
        as_records(pd.DataFrame(index=range(5)), None, None)
