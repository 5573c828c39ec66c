"""The CLI as a user meets it: help, config files, environment variables, the demo."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.jobs.cli import cli


@pytest.mark.parametrize("command", [[], ["train"], ["score"], ["demo"], ["models", "ls"],
                                     ["models", "promote"], ["models", "rollback"], ["models", "show"]])
def test_help_says_what_and_shows_an_example(command):
    res = CliRunner().invoke(cli, command + ["--help"])
    assert res.exit_code == 0
    assert "Example" in res.output or "vigil train" in res.output


def _run_target(args, env=None):
    res = CliRunner(env=env or {}).invoke(cli, args)
    assert res.exit_code == 0, res.output
    run = Path(res.output.split("run ", 1)[1].split(":", 1)[0])
    return json.loads((run / "manifest.json").read_text())["thresholds"]["target_fpr"]


def test_precedence_cli_over_env_over_config_file(features_registry, tmp_path):
    reg = features_registry
    data = str(Path(reg["train_paths"][0]))
    config = tmp_path / "score.yaml"
    config.write_text(f"registry: {reg['registry']}\nname: cardio\ntarget-fpr: 0.05\n"
                      f"output: {tmp_path / 'out'}\noverwrite: true\n")
    base = ["score", "--config", str(config), "--input", data, "--run-id", "p"]
    assert _run_target(base) == 0.05
    assert _run_target(base, {"VIGIL_SCORE_TARGET_FPR": "0.02"}) == 0.02
    assert _run_target(base + ["--target-fpr", "0.1"], {"VIGIL_SCORE_TARGET_FPR": "0.02"}) == 0.1


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("registry: r\ntarget_fpr_typo: 1\n")
    res = CliRunner().invoke(cli, ["score", "--config", str(config)])
    assert res.exit_code == 2 and "target_fpr_typo" in res.output


@pytest.mark.parametrize("command", [
    ["score", "--output", "{out}", "--input", "{data}"],
    ["train", "--input", "{data}"],
    ["models", "ls"],
])
def test_storage_errors_are_one_line(features_registry, tmp_path, command):
    """A registry TensorFlow's file systems cannot reach is an error line, not a traceback."""
    data = str(features_registry["train_paths"][0])
    args = [a.format(out=tmp_path / "out", data=data) for a in command]
    res = CliRunner().invoke(cli, [*args, "--registry", "nosuchfs://registry", "--name", "cardio"])
    assert res.exit_code == 1, res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith("vigil: error: storage: UnimplementedError")
    assert "'nosuchfs' not implemented" in line and "nosuchfs://registry" in line
    assert not (tmp_path / "out").exists()


def test_models_commands(features_registry, tmp_path):
    import shutil
    root = tmp_path / "reg"
    shutil.copytree(features_registry["registry"], root)
    (root / "cardio" / "versions" / "0002").mkdir()           # a publish that never finished
    reg = ["--registry", str(root), "--name", "cardio"]
    res = CliRunner().invoke(cli, ["models", "ls", "--registry", str(root)])     # every model
    assert res.exit_code == 0, res.output
    assert res.output.split() == ["NAME", "PRODUCTION", "VERSIONS", "cardio", "0001", "1"]
    res = CliRunner().invoke(cli, ["models", "ls", "--registry", str(tmp_path)])
    assert res.exit_code == 1 and res.output.startswith(f"vigil: error: no models in {tmp_path};")
    res = CliRunner().invoke(cli, ["models", "ls", *reg])
    assert res.exit_code == 0, res.output
    header, newest, first = res.output.strip().splitlines()
    assert header.split()[:3] == ["VERSION", "STAGE", "CREATED"] and "GATES" in header
    assert newest.split()[:2] == ["0002", "incomplete"]
    assert first.split()[:2] == ["0001", "production"] and "features 21" in first
    assert first.split()[-1] == "passed" and " 0.01 " in first and "cannot flag" not in first
    listed = json.loads(CliRunner().invoke(cli, ["models", "ls", *reg, "--json"]).output)
    assert [(v["version"], v["stage"]) for v in listed] == [("0002", "incomplete"), ("0001", "production")]
    assert listed[1]["targets"] == {"0.01": True} and listed[1]["training_rows"] == 900
    res = CliRunner().invoke(cli, ["models", "show", *reg])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("cardio version 0001 (production), created ")
    assert "target FPR 0.01: anomaly_score " in res.output and "gates:      passed" in res.output
    assert "features:   f0, f1, f2, f3, f4, f5, f6, f7 and 13 more" in res.output
    shown = json.loads(CliRunner().invoke(cli, ["models", "show", *reg, "--json"]).output)
    assert shown["version"] == "0001" and shown["thresholds"]["0.01"]["anomaly_score"] is not None
    res = CliRunner().invoke(cli, ["models", "promote", *reg, "--model-version", "9"])
    assert res.exit_code == 1 and "incomplete version" in res.output


def test_demo_in_a_real_subprocess(tmp_path):
    vigil = Path(sys.executable).with_name("vigil")
    out = subprocess.run([str(vigil), "demo", "--output", str(tmp_path / "demo"), "--epochs", "3"],
                         capture_output=True, text=True, timeout=600,
                         env={k: v for k, v in os.environ.items() if not k.startswith("TF_")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "AUROC against digit 7" in out.stdout and "anomaly_score" in out.stdout
    assert re.search(r"flagged at target FPR 0\.05: \d+ of 179 anomalies caught", out.stdout)
    assert "Traceback" not in out.stderr
    # TensorFlow's and CUDA's native start-up lines stay out of the user's terminal.
    assert not re.search(r"absl::InitializeLog|cuda|^[IWE]\d{4} ", out.stderr, re.M), out.stderr[:2000]
    res = subprocess.run([str(vigil), "score", "--input", str(tmp_path / "none" / "*.parquet"),
                          "--registry", str(tmp_path / "demo" / "registry"), "--name", "demo-images",
                          "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().startswith("vigil: error: --input")
    assert res.stderr.strip().count("\n") == 0
    assert (tmp_path / "demo" / "runs" / "demo" / "_SUCCESS").exists()
    report = tmp_path / "demo" / "runs" / "demo" / "report" / "index.html"
    assert f"report:      {report}" in out.stdout and report.exists()
    assert "versions/0001/report.html" in out.stdout
    assert "great_expectations" not in out.stdout + out.stderr      # no library chatter


def test_relative_paths_score_report_and_reread_from_another_folder(features_registry, tmp_path,
                                                                    monkeypatch):
    """The README's own commands, as a cron job runs them: relative input, registry and
    output, with the report; every path lands in the manifest absolute, so the run can be
    re-reported from anywhere."""
    import shutil
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copytree(features_registry["registry"], work / "registry")
    shutil.copy(features_registry["train_paths"][0], work / "data" / "part-0.parquet")
    monkeypatch.chdir(work)
    res = CliRunner().invoke(cli, ["score", "--input", "data/*.parquet", "--registry", "./registry",
                                   "--name", "cardio", "--output", "./runs", "--run-id", "night"])
    assert res.exit_code == 0, res.output
    run = work / "runs" / "night"
    assert (run / "_SUCCESS").exists() and (run / "report" / "index.html").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["registry"] == str(work / "registry")
    assert [i["uri"] for i in manifest["inputs"]] == [str(work / "data" / "part-0.parquet")]
    monkeypatch.chdir(tmp_path)
    again = CliRunner().invoke(cli, ["report", "work/runs/night"])
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_out_of_range_options_are_usage_errors_in_every_command(features_registry, tmp_path, value):
    data = str(Path(features_registry["train_paths"][0]))
    common = ["--registry", str(tmp_path / "reg"), "--name", "m"]
    score = CliRunner().invoke(cli, ["score", "--input", data, *common, "--output", str(tmp_path / "o"),
                                     "--target-fpr", value])
    train = CliRunner().invoke(cli, ["train", "--input", data, *common, "--target-fpr", value])
    assert (score.exit_code, train.exit_code) == (2, 2), score.output + train.output
    spec = tmp_path / "night.yaml"
    spec.write_text(f"kind: score\ninputs: ['{data}']\nregistry: {features_registry['registry']}\n"
                    f"name: cardio\noutput: {tmp_path / 'runs'}\noptions: {{target_fpr: {value}}}\n"
                    f"roots: ['{tmp_path}', '{Path(data).parent}', '{features_registry['registry']}']\n")
    run = CliRunner().invoke(cli, ["run", str(spec), "--date", "2026-12-04"])
    assert run.exit_code == 2 and "--target-fpr" in run.output, run.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()


def test_too_few_rows_stop_before_training_with_the_minimum(features_registry, tmp_path):
    from tests import helpers
    x = features_registry["x"]
    helpers.table_shards(tmp_path / "few", x[:12], shards=1)
    res = CliRunner().invoke(cli, ["train", "--input", str(tmp_path / "few" / "*.parquet"),
                                   "--registry", str(tmp_path / "reg"), "--name", "few"])
    assert res.exit_code == 1
    assert "only 12 normal records" in res.output and "training needs at least 15" in res.output
    assert res.output.strip().splitlines()[-1].startswith("vigil: error:")
    assert not (tmp_path / "reg").exists() or not any((tmp_path / "reg").rglob("*.keras"))
