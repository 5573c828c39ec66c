"""Scheduled specs, evaluation, and refusing runs that never finished publishing."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli


def _spec(tmp_path, features_registry, extra=""):
    day_dir = tmp_path / "incoming" / "2026-11-24"
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(day_dir, x[1000:1300], y[1000:1300])
    spec = tmp_path / "nightly.yaml"
    spec.write_text(f"kind: score\ninputs: ['{tmp_path}/incoming/{{date}}/*.parquet']\n"
                    f"registry: {features_registry['registry']}\nname: cardio\n"
                    f"output: {tmp_path}/runs\noptions: {{target_fpr: 0.05}}\n"
                    f"roots: ['{tmp_path}', '{features_registry['root']}']\n{extra}")
    return spec


def test_spec_run_twice_for_a_date_gives_identical_output(features_registry, tmp_path):
    spec = _spec(tmp_path, features_registry)
    args = ["run", str(spec), "--date", "2026-11-24"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    run = tmp_path / "runs" / "2026-11-24"
    a = ds.dataset(run / "scores").to_table().sort_by("id")
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    b = ds.dataset(run / "scores").to_table().sort_by("id")
    assert a.drop(["top_features"]).equals(b.drop(["top_features"])) and a.num_rows == 300
    assert json.loads((run / "manifest.json").read_text())["thresholds"]["target_fpr"] == 0.05
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["2026-11-24"]


def test_unknown_spec_key_is_named(features_registry, tmp_path):
    spec = _spec(tmp_path, features_registry, extra="outptu: typo\n")
    res = CliRunner().invoke(cli, ["run", str(spec), "--date", "2026-11-24"])
    assert res.exit_code == 2 and "unknown key 'outptu'" in res.output
    spec.write_text(spec.read_text().replace("outptu: typo\n", "").replace(
        "{target_fpr: 0.05}", "{target_fpr: 0.05, traget: 1}"))
    res = CliRunner().invoke(cli, ["run", str(spec), "--date", "2026-11-24"])
    assert res.exit_code == 2 and "options.traget" in res.output
    for date in ("24/11/2026", "2026-13-01", "2026-02-30"):
        res = CliRunner().invoke(cli, ["run", str(spec), "--date", date])
        assert res.exit_code == 2 and f"--date '{date}': expected a calendar date YYYY-MM-DD" in res.output


def test_spec_refuses_python_tags(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text("kind: !!python/object/apply:os.system ['touch pwned']\n")
    res = CliRunner().invoke(cli, ["run", str(spec), "--date", "2026-11-24"])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    assert not Path("pwned").exists()


def test_evaluate_a_labelled_run(features_registry, tmp_path):
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(tmp_path / "in", x[900:], y[900:])
    res = CliRunner().invoke(cli, ["score", "--input", str(tmp_path / "in" / "*.parquet"),
                                   "--registry", features_registry["registry"], "--name", "cardio",
                                   "--output", str(tmp_path / "runs"), "--run-id", "r"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "runs" / "r"),
                                   "--label-column", "label", "--normal-values", "0"])
    assert res.exit_code == 0, res.output
    assert "anomaly_score" in res.output and "AUROC" in res.output
    result = json.loads((tmp_path / "runs" / "r" / "evaluation.json").read_text())
    assert result["anomalies"] == int((y[900:] == 1).sum())
    assert result["scores"]["anomaly_score"]["auroc"] > 0.8
    n0, n1 = int((y[900:] == 0).sum()), int((y[900:] == 1).sum())
    wrong = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "runs" / "r"),
                                     "--label-column", "label", "--normal-values", "normal"])
    assert wrong.exit_code == 1
    assert wrong.output.strip().endswith(f"every labelled row is an anomaly under --normal-values normal; "
                                         f"labels seen: 0 ({n0}), 1 ({n1}); AUROC needs both")
    typo = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "runs" / "r"), "--label-column", "lable",
                                    "--normal-values", "0"])
    assert typo.exit_code == 1 and typo.output.strip().endswith(
        "no column 'lable' in the scores; did you mean 'label'? (carried columns: label)")


def test_unpublished_run_is_refused(tmp_path):
    run = tmp_path / "runs" / "half"
    (run / "scores").mkdir(parents=True)
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--label-column", "label"])
    assert res.exit_code == 1 and "_SUCCESS" in res.output
