"""What a new operator meets first: small tables, mistyped options, strict JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli


def _strict(path: Path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def small_table(features_registry, tmp_path_factory):
    """300 normal training rows and a scoring table with 12 planted anomalies."""
    root = tmp_path_factory.mktemp("small")
    x, y = features_registry["x"], features_registry["y"]
    normal, anomalous = x[y == 0], x[y == 1]
    helpers.table_shards(root / "train", normal[:300], shards=1, prefix="t")
    score = np.concatenate([normal[300:400], anomalous[:12]])
    labels = np.r_[np.zeros(100, int), np.ones(12, int)]
    helpers.table_shards(root / "score", score, labels, shards=1, prefix="s")
    return root


def _train(root: Path, name: str, *extra: str):
    return CliRunner().invoke(cli, ["train", "--input", str(root / "train" / "*.parquet"),
                                    "--registry", str(root / "reg"), "--name", name,
                                    "--epochs", "3", "--members", "1", *extra])


def test_a_small_table_says_at_train_time_why_it_cannot_flag_and_what_to_change(small_table):
    res = _train(small_table, "default")
    assert res.exit_code == 5, res.output
    assert "target FPR 0.01: cannot flag: at target FPR 0.01 the threshold needs 99 normal " \
           "calibration values and has 90" in res.output
    assert "train with --target-fpr 0.011, or train on about 330 normal records" in res.output
    assert "stays a candidate: is_anomaly can never be true" in res.output
    manifest = _strict(Path(small_table, "reg", "default", "versions", "0001", "manifest.json"))
    description = manifest["calibration"]["description"]
    assert description["can_flag"] == {"0.01": False}
    assert description["thresholds"]["0.01"]["anomaly_score"] is None


def test_a_model_trained_at_5_percent_scores_at_5_percent_and_flags(small_table):
    res = _train(small_table, "five", "--target-fpr", "0.05")
    assert res.exit_code == 0, res.output
    assert "target FPR 0.05: can flag" in res.output
    common = ["--input", str(small_table / "score" / "*.parquet"), "--registry",
              str(small_table / "reg"), "--name", "five", "--output", str(small_table / "runs")]
    scored = CliRunner().invoke(cli, ["score", *common, "--run-id", "r5"])
    assert scored.exit_code == 0, scored.output
    assert "target FPR 0.05)" in scored.output
    run = small_table / "runs" / "r5"
    manifest = _strict(run / "manifest.json")
    assert manifest["thresholds"]["target_fpr"] == 0.05 and manifest["counts"]["anomalies"] > 0
    evaluated = CliRunner().invoke(cli, ["evaluate", str(run), "--label-column", "label",
                                         "--normal-values", "0"])
    assert evaluated.exit_code == 0 and "could flag nothing" not in evaluated.output
    _strict(run / "evaluation.json")
    for page in run.rglob("*.json"):
        _strict(page)
    # A rate its calibration cannot reach is refused before anything is read.
    refused = CliRunner().invoke(cli, ["score", *common, "--run-id", "r1", "--target-fpr", "0.001"])
    assert refused.exit_code == 2
    line = refused.output.strip()
    assert "\n" not in line and "--target-fpr 0.001: model five/0001 at target FPR 0.001" in line
    assert not (small_table / "runs" / "r1").exists()


def test_evaluate_says_when_a_run_could_flag_nothing(small_table):
    res = _train(small_table, "forced", "--allow-unflaggable")
    assert res.exit_code == 0, res.output
    scored = CliRunner().invoke(cli, ["score", "--input", str(small_table / "score" / "*.parquet"),
                                      "--registry", str(small_table / "reg"), "--name", "forced",
                                      "--output", str(small_table / "runs"), "--run-id", "rf",
                                      "--no-report"])
    assert scored.exit_code == 0, scored.output
    assert "warning: nothing can be flagged" in scored.output
    evaluated = CliRunner().invoke(cli, ["evaluate", str(small_table / "runs" / "rf"),
                                         "--label-column", "label", "--normal-values", "0"])
    assert "this run could flag nothing" in evaluated.output, evaluated.output
    _strict(small_table / "runs" / "rf" / "manifest.json")


@pytest.mark.parametrize("typo, suggestion", [("--target-fp", "--target-fpr"),
                                              ("--no-reprot", "--no-report"),
                                              ("--direct_num_worker", "--direct_num_workers")])
def test_a_mistyped_score_option_is_a_usage_error_with_a_suggestion(features_registry, tmp_path,
                                                                     typo, suggestion):
    data = str(features_registry["train_paths"][0])
    res = CliRunner().invoke(cli, ["score", "--input", data, "--registry", features_registry["registry"],
                                   "--name", "cardio", "--output", str(tmp_path / "out"), typo, "2"])
    assert res.exit_code == 2, res.output
    assert f"unknown option '{typo}'; did you mean {suggestion}?" in res.output
    assert not (tmp_path / "out").exists()


def test_a_mistyped_option_variable_is_a_usage_error_with_a_suggestion(features_registry, tmp_path):
    """click reads VIGIL_<COMMAND>_<OPTION> and ignores any other name: a typo in a cron job's
    environment would run with the default it meant to change."""
    data = str(features_registry["train_paths"][0])
    args = ["score", "--input", data, "--registry", features_registry["registry"], "--name", "cardio",
            "--output", str(tmp_path / "out"), "--no-report"]
    res = CliRunner().invoke(cli, args, env={"VIGIL_SCORE_TARGT_FPR": "0.05"})
    assert res.exit_code == 2, res.output
    assert "environment variable VIGIL_SCORE_TARGT_FPR names no option of 'vigil score'; " \
           "did you mean VIGIL_SCORE_TARGET_FPR?" in res.output
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(cli, ["models", "ls", "--registry", features_registry["registry"]],
                             env={"VIGIL_MODELS_LS_NAM": "cardio"})
    assert res.exit_code == 2 and "did you mean VIGIL_MODELS_LS_NAME?" in res.output
    ok = CliRunner().invoke(cli, [*args, "--run-id", "env"],
                            env={"VIGIL_SCORE_TARGET_FPR": "0.05", "VIGIL_TRAIN_EPOCS": "1"})
    assert ok.exit_code == 0, ok.output          # another command's variables are its own business
    manifest = json.loads((tmp_path / "out" / "env" / "manifest.json").read_text())
    assert manifest["options"]["target_fpr"] == 0.05


def test_beam_options_still_pass_through_and_specs_are_checked_too(features_registry, tmp_path):
    data = str(features_registry["train_paths"][0])
    ok = CliRunner().invoke(cli, ["score", "--input", data, "--registry", features_registry["registry"],
                                  "--name", "cardio", "--output", str(tmp_path / "out"), "--no-report",
                                  "--runner", "FnApiRunner", "--direct_num_workers", "1",
                                  "--job_name", "nightly"])
    assert ok.exit_code == 0, ok.output
    spec = tmp_path / "night.yaml"
    spec.write_text(f"kind: score\ninputs: ['{data}']\nregistry: {features_registry['registry']}\n"
                    f"name: cardio\noutput: {tmp_path / 'runs'}\nbeam_args: [--runer, FnApiRunner]\n"
                    f"roots: ['{tmp_path}', '{Path(data).parent}', '{features_registry['registry']}']\n")
    res = CliRunner().invoke(cli, ["run", str(spec), "--date", "2026-12-04"])
    assert res.exit_code == 2 and "unknown option '--runer'; did you mean --runner?" in res.output
    assert not (tmp_path / "runs").exists()


def test_training_progress_is_one_labelled_line_per_epoch_and_a_summary(small_table, caplog):
    caplog.set_level("INFO", logger="vigil.train")
    res = _train(small_table, "progress", "--target-fpr", "0.05", "--members", "2")
    assert res.exit_code == 0, res.output
    epochs = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    for who in ("member 1/2 VAE", "member 1/2 DAE", "member 2/2 VAE", "member 2/2 DAE"):
        line = next(m for m in epochs if m.startswith(who))
        assert " epoch 1/3: loss " in line and "val_loss" in line and "s left)" in line, line
    assert "Epoch 1/" not in res.output                    # no Keras bars
    lines = res.output.splitlines()
    assert lines[0] == "published progress version 0001 and promoted it to production"
    assert lines[1].startswith("  splits:     validation ") and "train " in lines[1]
    assert lines[2] == "  target FPR 0.05: can flag"
    assert lines[3] == "  gates:      passed"
    assert lines[4].startswith("  report:     ") and lines[4].endswith("/0001/report.html")


def test_quiet_drops_the_progress_lines(small_table, caplog):
    caplog.set_level("DEBUG")
    res = CliRunner().invoke(cli, ["--quiet", "train", "--input", str(small_table / "train" / "*.parquet"),
                                   "--registry", str(small_table / "reg"), "--name", "quiet",
                                   "--epochs", "2", "--members", "1", "--target-fpr", "0.05"])
    assert res.exit_code == 0, res.output
    assert not [r for r in caplog.records if r.name == "vigil.train" and r.levelname == "INFO"]
    assert res.output.startswith("published quiet version 0001")


def test_scoring_progress_names_the_count_the_total_and_the_time_left(caplog):
    from types import SimpleNamespace

    import pyarrow as pa

    from vigil.pipeline.records import RecordBlock
    from vigil.pipeline.transforms import ToTable
    from vigil.schemas.tables import scores_schema
    caplog.set_level("INFO", logger="vigil.pipeline")
    step = ToTable("r", scores_schema([pa.field("label", pa.int64())]), ("a", "b"), (2,), expected=10,
                   log_every=0)
    step.setup()
    inference = {n: np.array([0.5]) for n in (
        "vae_recon_logprob", "vae_elbo", "vae_log_px", "dae_recon_error", "anomaly_score",
        "anomaly_pvalue", "threshold")}
    inference.update({f"{n}_pvalue": np.array([0.5]) for n in ("vae_recon_logprob", "vae_elbo",
                                                               "vae_log_px", "dae_recon_error")},
                     is_anomaly=np.array([False]), top_index=np.array([[1]]),
                     top_contribution=np.array([[0.3]]))
    result = SimpleNamespace(example=RecordBlock(["x1"], np.zeros((1, 2)), ["s.parquet"], {"label": [1]}),
                             inference=inference, model_id="0001")
    (table,) = list(step.process(result))
    (row,) = table.to_pylist()
    assert row["top_features"] == [{"index": 1, "contribution": 0.3, "name": "b", "position": None}]
    assert row["label"] == 1 and row["model_version"] == "0001" and row["run_id"] == "r"
    message = caplog.records[-1].getMessage()
    assert message.startswith("scored 1 of 10 records (") and "s left)" in message, message


def test_reading_progress_names_files_records_and_losses(features_registry, tmp_path, caplog):
    from vigil.pipeline.readers import ReadSpec
    from vigil.pipeline.transforms import ReadFiles, path_token
    caplog.set_level("INFO", logger="vigil.pipeline")
    x, y = features_registry["x"], features_registry["y"]
    (good,) = helpers.table_shards(tmp_path / "in", x[:30], y[:30], shards=1)
    step = ReadFiles(ReadSpec("parquet", feature_columns=tuple(features_registry["columns"])), files=4,
                     log_every=0)
    step.setup()
    list(step.process((path_token(good), "parquet", path_token(str(tmp_path / "in")))))
    assert caplog.records[-1].getMessage() == "read 1 of 4 files: 30 records, 0 of them lost to damaged files"


def test_a_numeric_column_with_a_stray_text_value_is_named_not_silently_dropped(features_registry,
                                                                                 tmp_path, caplog):
    """One '?' makes a CSV column text: training says which column it left out and how to keep it."""
    x = features_registry["x"][features_registry["y"] == 0][:300]
    cols = features_registry["columns"]
    (tmp_path / "train").mkdir()
    lines = ["id," + ",".join(cols)] + [f"r{i}," + ",".join(f"{v:.6g}" for v in row)
                                        for i, row in enumerate(x)]
    lines[8] = lines[8].split(",", 1)[0] + ",?," + lines[8].split(",", 2)[2]        # f0 of row r7
    (tmp_path / "train" / "t.csv").write_text("\n".join(lines) + "\n")
    common = ["train", "--input", str(tmp_path / "train" / "*.csv"), "--registry", str(tmp_path / "reg"),
              "--epochs", "2", "--members", "1", "--target-fpr", "0.05"]
    caplog.set_level("INFO", logger="vigil.train")
    res = CliRunner().invoke(cli, [*common, "--name", "auto"])
    assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "not numeric, so not used as features: f0 (string); to use a column, name it in " \
           "--feature-columns" in warned[0]
    res = CliRunner().invoke(cli, [*common, "--name", "named", "--feature-columns", ",".join(cols)])
    assert res.exit_code == 0, res.output
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert skipped == [f"skipped 1 unusable training record (1 non_numeric_feature; first: id r7 in "
                       f"{tmp_path / 'train' / 't.csv'}: column 'f0' holds a value that is not a number)"]
    manifest = _strict(tmp_path / "reg" / "named" / "versions" / "0001" / "manifest.json")
    assert manifest["preprocessing"]["feature_columns"] == cols


def test_a_table_without_numeric_columns_stops_training_in_one_line(tmp_path):
    """It aborted the process (SIGABRT) when TensorFlow built a model of no features."""
    (tmp_path / "t.csv").write_text("id,a,b\n" + "".join(f"r{i},x{i},y\n" for i in range(200)))
    res = CliRunner().invoke(cli, ["train", "--input", str(tmp_path / "t.csv"), "--registry",
                                   str(tmp_path / "reg"), "--name", "t"])
    assert res.exit_code == 2
    assert res.output.strip() == (f"vigil: error: {tmp_path / 't.csv'}: no numeric feature columns (a "
                                  "(string), b (string) are not numbers); name the features with "
                                  "--feature-columns")


def test_decimal_half_float_and_dictionary_columns_are_features(tmp_path):
    """Parquet's other number types are numbers to training, as they are to scoring."""
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    from vigil.jobs.train import TrainJobConfig, load_training_data
    rng = np.random.default_rng(0)
    v = rng.normal(size=(60, 3)).round(2)
    pq.write_table(pa.table({
        "id": [f"r{i}" for i in range(60)],
        "price": pa.array([decimal.Decimal(f"{x:.2f}") for x in v[:, 0]], pa.decimal128(6, 2)),
        "temp": pa.array(v[:, 1], pa.float64()).cast(pa.float16()),
        "count": pa.array((v[:, 2] * 10).astype("int32")).dictionary_encode()}), tmp_path / "t.parquet")
    x, _, _, columns, _, _ = load_training_data(TrainJobConfig((str(tmp_path / "t.parquet"),),
                                                            str(tmp_path / "reg"), "t"))
    assert columns == ["price", "temp", "count"] and x.shape == (60, 3)
    np.testing.assert_allclose(x[:, 0], v[:, 0])
