"""A Parquet column of number lists (an embedding, as Spark and pandas write them) is read
as one feature per element: trained on, scored, dead-lettered row by row, refused when a
file's column cannot hold the model's features."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from tests import helpers
from vigil.jobs.cli import cli

DIM = 48


def _write(path, x, ids, kind=pa.list_(pa.float32()), **extra):
    rows = [None if r is None else list(map(float, r)) for r in x]
    pq.write_table(pa.table({"id": ids, "emb": pa.array(rows, kind), **extra}), path)
    return str(path)


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vectors")
    x, y = helpers.few_shot_embeddings(n_normal=460, n_defect=60, dim=DIM)
    normal, defect = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    x[defect, :DIM // 8] += 3.0                 # defects well off the normals
    train, test = normal[:400], np.r_[normal[400:], defect]
    _write(tmp / "train.parquet", x[train], [f"tr{i}" for i in train],
           camera=pa.array(["a", "b"] * 200))         # text: not a feature
    res = CliRunner().invoke(cli, ["train", "--input", str(tmp / "train.parquet"), "--registry",
                                   str(tmp / "reg"), "--name", "emb", "--epochs", "5"])
    assert res.exit_code == 0, res.output
    return {"registry": str(tmp / "reg"), "name": "emb", "tmp": tmp, "x": x[test], "y": y[test],
            "ids": [f"te{i}" for i in test]}


def test_training_expands_the_column_into_its_elements(embedding_model):
    manifest = json.loads(next((embedding_model["tmp"] / "reg" / "emb" / "versions").glob(
        "*/manifest.json")).read_text())
    assert manifest["input"]["feature_columns"] == [f"emb[{i}]" for i in range(DIM)]
    res = CliRunner().invoke(cli, ["models", "show", "--registry", embedding_model["registry"],
                                   "--name", "emb"])
    assert f"features:   emb[0..{DIM - 1}]\n" in res.output


def test_vectors_score_as_their_elements_and_bad_rows_are_dead_letters(embedding_model, tmp_path):
    m = embedding_model
    rows = list(m["x"])
    rows[0], rows[1] = None, rows[1][:DIM - 1]              # a null list, a short one
    rows[2] = np.where(np.arange(DIM) == 5, np.nan, rows[2])  # a NaN element
    vec = _write(tmp_path / "vectors.parquet", rows, m["ids"], pa.list_(pa.float64()))
    # The same rows as one column per element, named as the model names its features.
    wide = {f"emb[{i}]": m["x"][3:, i] for i in range(DIM)}
    pq.write_table(pa.table({"id": m["ids"][3:], **wide}), tmp_path / "wide.parquet")
    res = helpers.score_cli(m, [vec], tmp_path / "out")
    assert res.exit_code == 0, res.output
    run = str(tmp_path / "out" / "run1")
    helpers.check_invariant(run, [vec])
    scores, dead, _ = helpers.read_run(run)
    by_id = {d["id"]: d for d in dead.to_pylist()}
    assert by_id[m["ids"][0]]["message"] == f"column 'emb' is null; the model reads {DIM} values"
    assert by_id[m["ids"][1]]["reason"] == "wrong_shape"
    assert by_id[m["ids"][2]]["message"] == "feature 5 ('emb[5]') is nan"
    assert scores.num_rows == len(rows) - 3
    top = scores.column("top_features").to_pylist()[0]
    assert all(t["name"] == f"emb[{t['index']}]" for t in top)
    label = dict(zip(m["ids"], m["y"]))
    s = scores.sort_by("id")
    auroc = roc_auc_score([label[i] for i in s.column("id").to_pylist()], s.column("anomaly_score"))
    assert auroc > 0.9
    res = helpers.score_cli(m, [str(tmp_path / "wide.parquet")], tmp_path / "out", run_id="wide")
    assert res.exit_code == 0, res.output
    wide_scores = helpers.read_run(str(tmp_path / "out" / "wide"))[0].sort_by("id")
    assert wide_scores.column("anomaly_score").equals(s.column("anomaly_score"))


@pytest.mark.parametrize("column, message", [
    (pa.array(np.zeros(4)), "column 'emb' holds double values; the model reads its features "
                            "(emb[0], ...) as elements of a column of number lists"),
    (pa.array([["a"] * DIM] * 4), "column 'emb' holds list<element: string> values"),
    (None, "missing column 'emb' (the model needs 'id' and its 48 feature columns, emb[0] among them)"),
    (pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * 32), pa.float32()), 32),
     "column 'emb' holds vectors of 32 numbers; the model reads 48 values"),
])
def test_a_file_whose_column_cannot_hold_the_vectors_stops_the_run(embedding_model, tmp_path,
                                                                     column, message):
    table = {"id": [f"r{i}" for i in range(4)]} | ({"emb": column} if column is not None else {})
    pq.write_table(pa.table(table), tmp_path / "bad.parquet")
    res = helpers.score_cli(embedding_model, [str(tmp_path / "bad.parquet")], tmp_path / "out")
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "out").exists()


def test_the_python_api_reads_an_embedding_column_of_a_dataframe_like_the_cli(embedding_model,
                                                                               tmp_path):
    import pandas as pd

    from vigil.models import Detector
    m = embedding_model
    path = _write(tmp_path / "new.parquet", m["x"][:40], m["ids"][:40])
    frame = pd.read_parquet(path).set_index("id")          # 'emb' holds numpy arrays
    api = Detector.load(m["registry"], m["name"]).score(frame)
    res = helpers.score_cli(m, [path], tmp_path / "out")
    assert res.exit_code == 0, res.output
    cli = helpers.read_run(str(tmp_path / "out" / "run1"))[0].to_pandas().set_index("id")
    assert np.array_equal(api["anomaly_score"].to_numpy(), cli.loc[api.index, "anomaly_score"].to_numpy())
    arrow_backed = pd.read_parquet(path, dtype_backend="pyarrow").set_index("id")   # lists, not arrays
    same = Detector.load(m["registry"], m["name"]).score(arrow_backed)
    assert np.array_equal(same["anomaly_score"].to_numpy(), api["anomaly_score"].to_numpy())
    # Fitted on such a frame, a Detector names the features as vigil train does.
    det = Detector(epochs=2).fit(frame.iloc[:30])
    assert det.bundle_.preprocessing.feature_columns[:2] == ("emb[0]", "emb[1]")
    with pytest.raises(ValueError, match=r"column .emb. row 1 \(index 1\) holds 3 values; row 0 holds 48"):
        Detector.load(m["registry"], m["name"]).score(
            pd.DataFrame({"emb": [np.zeros(DIM), np.zeros(3)]}))


def test_training_takes_the_length_from_the_first_full_row_and_skips_the_others(tmp_path, caplog):
    from vigil.jobs.train import TrainJobConfig, load_training_data
    rows = [[], None] + [[float(i), 1.0, 2.0] for i in range(6)] + [[1.0]]
    _write(tmp_path / "t.parquet", rows, [f"r{i}" for i in range(len(rows))])
    with caplog.at_level("INFO", logger="vigil.train"):
        x, ids, kind, columns, _, _ = load_training_data(TrainJobConfig((str(tmp_path / "t.parquet"),),
                                                                     str(tmp_path / "reg"), "t"))
    assert columns == ["emb[0]", "emb[1]", "emb[2]"] and x.shape == (6, 3) and ids[0] == "r2"
    assert "skipped 3 unusable training records (3 wrong_shape; first: id r0" in caplog.text
    assert "column 'emb' holds 0 values; the model reads 3 values" in caplog.text
