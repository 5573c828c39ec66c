"""End to end through ``vigil score`` on real files, with bad records in known numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli


def _score(reg, inputs, out, *extra, run_id="run1"):
    args = ["score", "--registry", reg["registry"], "--name", reg["name"], "--output", str(out),
            "--run-id", run_id]
    for i in inputs:
        args += ["--input", i]
    return CliRunner().invoke(cli, args + list(extra))


@pytest.fixture(scope="module")
def feature_inputs(features_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_inputs")
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(root / "in", x[:300], y[:300], shards=2)
    # A shard with 4 bad rows among 6: NaN, +Inf, missing id, -Inf.
    bad = x[300:306].copy()
    bad[0, 3], bad[1, 5], bad[3, 0] = np.nan, np.inf, -np.inf
    # Dead: b0 (NaN), b1 (+Inf), the row without id (also -Inf; the id is checked first).
    pq.write_table(pa.table({"id": ["b0", "b1", "b2", None, "b4", "b5"],
                             **{f"f{j}": bad[:, j] for j in range(x.shape[1])},
                             "label": y[300:306]}), root / "in" / "part-bad.parquet")
    # A retyped column: f2 as strings, one not a number.
    typed = {"id": ["s0", "s1"], **{f"f{j}": x[306:308, j] for j in range(x.shape[1])},
             "label": y[306:308]}
    typed["f2"] = ["1.5", "abc"]
    pq.write_table(pa.table(typed), root / "in" / "part-typed.parquet")
    # A truncated footer and an empty file.
    data = (root / "in" / "part-0.parquet").read_bytes()
    (root / "in" / "part-trunc.parquet").write_bytes(data[:-20])
    (root / "in" / "part-empty.parquet").write_bytes(b"")
    return root, sorted(str(p) for p in (root / "in").glob("*.parquet"))


def test_features_run_accounts_for_every_record(features_registry, feature_inputs, tmp_path):
    root, files = feature_inputs
    res = _score(features_registry, [str(root / "in" / "*.parquet")], tmp_path / "out",
                 "--max-bad-fraction", "0.5", "--allow-uncounted-files")
    assert res.exit_code == 0, res.output + str(res.exception)
    run = str(tmp_path / "out" / "run1")
    helpers.check_invariant(run, files)
    scores, dead, manifest = helpers.read_run(run)
    reasons = sorted(dead.column("reason").to_pylist())
    assert reasons == sorted(["non_finite_feature", "non_finite_feature", "missing_id",
                              "non_numeric_feature", "unreadable_file", "empty_file"])
    assert scores.num_rows == 300 + 3 + 1
    assert set(scores.column("model_version").to_pylist()) == {"0001"}
    assert set(scores.column("run_id").to_pylist()) == {"run1"}
    assert "label" in scores.schema.names
    meta = pq.read_schema(next(Path(run, "scores").glob("*.parquet"))).metadata
    thresholds = json.loads(meta[b"vigil.thresholds"])
    assert thresholds["target_fpr"] == 0.01
    assert np.allclose(scores.column("threshold").to_numpy(), thresholds["anomaly_score"])
    flagged = scores.column("anomaly_score").to_numpy() > thresholds["anomaly_score"]
    assert (flagged == scores.column("is_anomaly").to_numpy()).all()
    for name in ("vae_recon_logprob_pvalue", "anomaly_pvalue"):
        p = scores.column(name).to_numpy()
        assert ((p > 0) & (p <= 1)).all()
    not_full = [i for i in manifest["inputs"] if not i["fully_read"]]
    assert {Path(i["uri"]).name for i in not_full} == {"part-trunc.parquet", "part-empty.parquet"}
    assert all(len(t) == 5 for t in scores.column("top_features").to_pylist())
    columns = features_registry["columns"]     # explanations carry the feature's name
    assert all(t["name"] == columns[t["index"]] and t["position"] is None
               for top in scores.column("top_features").to_pylist() for t in top)
    # No payload in dead letters: messages are short and name no values beyond the reason.
    assert max(len(m) for m in dead.column("message").to_pylist()) < 300


def test_same_run_twice_gives_identical_scores(features_registry, feature_inputs, tmp_path):
    root, _ = feature_inputs
    args = (features_registry, [str(root / "in" / "part-[01].parquet")], tmp_path / "out")
    assert _score(*args).exit_code == 0
    first = helpers.read_run(str(tmp_path / "out" / "run1"))[0].sort_by("id")
    again = _score(*args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert _score(*args, "--overwrite").exit_code == 0
    second = helpers.read_run(str(tmp_path / "out" / "run1"))[0].sort_by("id")
    assert first.drop(["top_features"]).equals(second.drop(["top_features"]))
    assert first.column("top_features").to_pylist() == second.column("top_features").to_pylist()


def test_batch_size_changes_no_score_and_scores_files_hold_few_row_groups(features_registry,
                                                                          feature_inputs, tmp_path):
    """Records are scored in batches of --batch-size rows; the sink gathers the batches'
    tables, so a file's row groups are not one per batch."""
    root, _ = feature_inputs
    glob = [str(root / "in" / "part-[01].parquet")]
    assert _score(features_registry, glob, tmp_path / "a").exit_code == 0
    res = _score(features_registry, glob, tmp_path / "b", "--batch-size", "7")
    assert res.exit_code == 0, res.output
    assert helpers.scores_equal(str(tmp_path / "a" / "run1"), str(tmp_path / "b" / "run1"))
    files = sorted(Path(tmp_path / "b" / "run1" / "scores").glob("*.parquet"))
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in files]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert rows == 300 and sum(groups) <= len(files) + 2, groups   # not 300 / 7 of them


def test_multiprocess_runner_gives_identical_rows(features_registry, feature_inputs, tmp_path):
    root, _ = feature_inputs
    glob = [str(root / "in" / "part-[01].parquet")]
    assert _score(features_registry, glob, tmp_path / "a").exit_code == 0
    res = _score(features_registry, glob, tmp_path / "b", "--direct_num_workers", "2",
                 "--direct_running_mode", "multi_processing")
    assert res.exit_code == 0, res.output
    a = helpers.read_run(str(tmp_path / "a" / "run1"))[0].sort_by("id")
    b = helpers.read_run(str(tmp_path / "b" / "run1"))[0].sort_by("id")
    assert a.drop(["top_features"]).equals(b.drop(["top_features"]))


def test_one_model_copy_shared_by_worker_processes_gives_identical_rows(features_registry,
                                                                        feature_inputs, tmp_path):
    """--model-copies 1: Beam loads the model once, in a process of its own, behind a proxy."""
    root, _ = feature_inputs
    glob = [str(root / "in" / "part-[01].parquet")]
    multi = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert _score(features_registry, glob, tmp_path / "a", *multi).exit_code == 0
    res = _score(features_registry, glob, tmp_path / "b", *multi, "--model-copies", "1")
    assert res.exit_code == 0, res.output
    helpers.same_runs(str(tmp_path / "a" / "run1"), str(tmp_path / "b" / "run1"))


def test_too_many_bad_records_publish_nothing(features_registry, feature_inputs, tmp_path):
    root, _ = feature_inputs
    res = _score(features_registry, [str(root / "in" / "part-bad.parquet")], tmp_path / "out")
    assert res.exit_code == 3, res.output
    assert "max-bad-fraction" in res.output
    assert not (tmp_path / "out" / "run1").exists()


def test_missing_column_stops_before_scoring(features_registry, tmp_path):
    pq.write_table(pa.table({"id": ["a"], "f0": [1.0]}), tmp_path / "narrow.parquet")
    res = _score(features_registry, [str(tmp_path / "narrow.parquet")], tmp_path / "out")
    assert res.exit_code == 2
    assert "narrow.parquet: missing column 'f1'" in res.output
    assert not (tmp_path / "out").exists()


def test_glob_matching_nothing_is_a_usage_error(features_registry, tmp_path):
    res = _score(features_registry, [str(tmp_path / "nope" / "*.parquet")], tmp_path / "out")
    assert res.exit_code == 2 and "matches no files" in res.output
    assert str(tmp_path / "nope") in res.output


def test_inputs_whose_names_say_no_format_stop_before_scoring(features_registry, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("part-00000", "part-00001"):
        (tmp_path / "in" / name).write_bytes(b"PAR1")
    res = _score(features_registry, [str(tmp_path / "in" / "*")], tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "part-00000: cannot tell the format from the name; pass --format" in res.output
    assert not (tmp_path / "out").exists()


def test_missing_model_is_one_line(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    res = CliRunner().invoke(cli, ["score", "--input", str(tmp_path / "x.parquet"), "--registry",
                                   str(tmp_path / "reg"), "--name", "ghost", "--output", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert res.output.strip().count("\n") == 0 and "no production version" in res.output


def test_images_run_with_bad_records(images_registry, tmp_path):
    images, labels = helpers.mnist(120, offset=960)
    files = helpers.image_shards(tmp_path / "in", images[:100], labels[:100], shards=2)
    rgb = np.stack([images[100]] * 3, axis=-1)
    extra = [
        helpers.example(b"rgb-ok", helpers.png(rgb), 3),                    # converted, scored
        helpers.example(b"garbage", b"\x89PNG not really", 1),              # undecodable
        helpers.example(None, helpers.png(images[101]), 1),                 # missing id
        helpers.example(b"\xff\xfe", helpers.png(images[102]), 1),          # non-UTF-8 id
        helpers.example(b"big", helpers.png(np.zeros((40, 40), np.uint8)), 1),  # over pixel cap
    ]
    files.append(helpers.write_tfrecord(tmp_path / "in" / "extra.tfrecord", extra))
    good = [helpers.example(f"t-{i}".encode(), helpers.png(images[103 + i]), 1) for i in range(5)]
    path = helpers.write_tfrecord(tmp_path / "in" / "trunc.tfrecord", good)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-30])                                      # cut into record 5
    files.append(path)
    res = _score(images_registry, [str(tmp_path / "in" / "*.tfrecord")], tmp_path / "out",
                 "--max-pixels", "1000", "--max-bad-fraction", "0.2", "--allow-uncounted-files")
    assert res.exit_code == 0, res.output
    run = str(tmp_path / "out" / "run1")
    helpers.check_invariant(run, sorted(files))
    scores, dead, manifest = helpers.read_run(run)
    assert sorted(dead.column("reason").to_pylist()) == sorted(
        ["undecodable_image", "missing_id", "non_utf8_id", "image_too_large", "truncated_file"])
    assert "rgb-ok" in scores.column("id").to_pylist()
    assert scores.num_rows == 100 + 1 + 4
    non_utf8 = dead.filter(pa.compute.equal(dead.column("reason"), "non_utf8_id"))
    assert non_utf8.column("id_hex").to_pylist() == ["fffe"]
    top = scores.column("top_features").to_pylist()[0]
    assert all(0 <= t["index"] < 28 * 28 for t in top)
    # ... and for images the pixel's [row, column, channel].
    assert all(t["name"] is None and t["position"] == [t["index"] // 28, t["index"] % 28, 0]
               for t in top)


def test_images_are_flagged_by_the_dae_smoothed_error(images_registry, tmp_path):
    """The image default judges the DAE by its smoothed residual: the scores table's
    anomaly_score is that statistic's surprise, recomputed here from the bundle alone."""
    from vigil.models import registry
    from vigil.models.calibration import smooth_surprise
    from vigil.models.config import DAE_SMOOTH_ERROR
    images, labels = helpers.mnist(40, offset=1080)
    helpers.image_shards(tmp_path / "in", images, labels, shards=1)
    res = _score(images_registry, [str(tmp_path / "in" / "*.tfrecord")], tmp_path / "out")
    assert res.exit_code == 0, res.output
    scores, _, _ = helpers.read_run(str(tmp_path / "out" / "run1"))
    bundle = registry.load(images_registry["registry"], "mnist", images_registry["version"])
    cal = bundle.calibration
    assert (cal.rule, cal.combine) == ("dae", (DAE_SMOOTH_ERROR,))
    ids = scores.column("id").to_pylist()                  # img-00012: the 13th image
    raw = bundle.score_raw(bundle.scorer(), images[[int(i[4:]) for i in ids]][..., None])
    expected = smooth_surprise(cal.scores[DAE_SMOOTH_ERROR], cal.adjusted(DAE_SMOOTH_ERROR, raw))
    np.testing.assert_allclose(scores.column("anomaly_score").to_numpy(), expected, rtol=1e-6)


def test_images_scored_in_bfloat16_keep_the_anomaly_flags_and_ranks(images_registry, tmp_path):
    """--precision bfloat16 lowers only the VAE's decoder: the DAE's scores, and so images'
    anomaly_score and flags, keep float32's bits; the VAE's scores keep their order."""
    from scipy.stats import spearmanr
    images, labels = helpers.mnist(60, offset=1140)
    helpers.image_shards(tmp_path / "in", images, labels, shards=1)
    runs = {}
    for precision in ("float32", "bfloat16"):
        res = _score(images_registry, [str(tmp_path / "in" / "*.tfrecord")], tmp_path / precision,
                     "--precision", precision, "--no-report")
        assert res.exit_code == 0, res.output
        scores, _, manifest = helpers.read_run(str(tmp_path / precision / "run1"))
        assert manifest["options"]["precision"] == precision
        runs[precision] = scores.sort_by("id").to_pandas()
    full, low = runs["float32"], runs["bfloat16"]
    for name in ("dae_recon_error", "anomaly_score", "anomaly_pvalue", "is_anomaly"):
        np.testing.assert_array_equal(full[name], low[name], err_msg=name)
    for name in ("vae_recon_logprob", "vae_elbo", "vae_log_px"):
        assert spearmanr(full[name], low[name])[0] > 0.999, name
        np.testing.assert_allclose(low[name], full[name], rtol=1e-2, err_msg=name)
