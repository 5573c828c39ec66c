"""Data-quality reports: known defects fail exactly the expected checks; the page renders."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli


def _checks(run: Path) -> list[dict]:
    return json.loads((run / "report" / "validation.json").read_text())["checks"]


def _failed(run: Path) -> set[tuple[str, str, str]]:
    return {(c["frame"], c["expectation"], c["column"] or "") for c in _checks(run) if not c["success"]}


@pytest.fixture(scope="module")
def defective_run(features_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("defects")
    x, y = features_registry["x"], features_registry["y"]
    normal = x[y == 0][900:1200].copy()
    normal[:30, 3] = np.nan                         # 10% NaN in f3: input rate over the limit
    shifted = x[y == 0][1200:1230].copy()
    shifted[:, 0] += 50 * x[:, 0].std()             # far outside training: anomaly rate jumps
    data = np.concatenate([normal, shifted])
    paths = helpers.table_shards(root / "in", data, np.zeros(len(data)), shards=2)
    raw = Path(paths[0]).read_bytes()
    Path(root / "in" / "part-9.parquet").write_bytes(raw[:-40])   # a file not fully read
    res = CliRunner().invoke(cli, [
        "score", "--input", str(root / "in" / "*.parquet"), "--registry", features_registry["registry"],
        "--name", "cardio", "--output", str(root / "runs"), "--run-id", "bad", "--max-bad-fraction", "0.5",
        "--allow-uncounted-files"])
    assert res.exit_code == 0, res.output
    return root / "runs" / "bad", res.output


def test_known_defects_fail_exactly_the_expected_checks(defective_run):
    run, output = defective_run
    assert _failed(run) == {
        ("inputs", "expect_column_values_to_be_between", "missing_share"),
        ("inputs", "expect_column_values_to_be_between", "outside_range_share"),
        ("summary", "expect_column_values_to_be_between", "anomaly_rate"),
        ("files", "expect_column_values_to_be_in_set", "fully_read"),
    }
    observed = {c["column"]: c["observed"] for c in _checks(run) if c["frame"] in ("inputs", "files")}
    assert observed["missing_share"] == "1 feature: f3 (0.0909)"   # 30 of 330 rows
    assert observed["fully_read"] == f"1 file: {run.parent.parent / 'in' / 'part-9.parquet'}"
    assert observed["outside_range_share"].startswith("1 feature: f0 (")
    assert "CRITICAL" in output and (run / "report" / "data_docs" / "index.html").exists()
    page = (run / "report" / "index.html").read_text()
    assert "Files not fully read" in page and "part-9.parquet" in page
    assert "30 non_finite_feature" in page          # dead letters by reason, under their count


def test_exit_code_follows_fail_on_dq(defective_run):
    run, _ = defective_run
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    res = CliRunner().invoke(cli, ["report", str(run), "--fail-on-dq"])
    assert res.exit_code == 4 and "critical data-quality" in res.output


def test_clean_run_passes_every_check(features_registry, tmp_path):
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(tmp_path / "in", x[y == 0][900:1300], np.zeros(400))
    res = CliRunner().invoke(cli, [
        "score", "--input", str(tmp_path / "in" / "*.parquet"), "--registry", features_registry["registry"],
        "--name", "cardio", "--output", str(tmp_path / "runs"), "--run-id", "ok", "--fail-on-dq"])
    assert res.exit_code == 0, res.output
    assert _failed(tmp_path / "runs" / "ok") == set()


def test_an_empty_input_is_published_and_fails_one_named_check(features_registry, tmp_path):
    """A nightly drop with no rows: the run is published (read 0 = scored 0 + dead-lettered 0)
    and its report fails the one check that says so, not a check about model versions."""
    x = features_registry["x"]
    helpers.table_shards(tmp_path / "in", x[:0], np.zeros(0), shards=1)
    res = CliRunner().invoke(cli, [
        "score", "--input", str(tmp_path / "in" / "*.parquet"), "--registry", features_registry["registry"],
        "--name", "cardio", "--output", str(tmp_path / "runs"), "--run-id", "empty", "--fail-on-dq"])
    assert res.exit_code == 4, res.output
    assert "read 0, scored 0, dead-lettered 0" in res.output
    assert _failed(tmp_path / "runs" / "empty") == {
        ("summary", "expect_column_values_to_be_between", "scored")}
    assert "records were scored (an empty input usually means the export upstream failed)" in res.output
    page = (tmp_path / "runs" / "empty" / "report" / "index.html").read_text()
    assert page.count("No records were scored.") == 2 and "nothing was scored" in page
    assert "plots/scores.png" not in page and "plots/top_anomalies.png" not in page


def test_a_wide_table_is_two_checks_that_name_their_features(tmp_path):
    """2,000 features: the per-feature checks are two checks over one row per feature (not
    6,000 checks), and a failure names the features, worst included, and counts the rest."""
    from vigil.pipeline.records import RawRecord
    from vigil.pipeline.report import quality
    from vigil.schemas import expectations
    names = [f"c{i}" for i in range(2000)]
    profile = {"kind": "features", "columns": {n: {"min": -1.0, "max": 1.0} for n in names}}
    x = np.random.default_rng(0).uniform(-1, 1, size=(300, 2000))
    x[:30, 7] = np.nan                                  # 10% missing
    x[:, 100:120] = 40.0                                # 20 features far outside their range
    frame = quality.input_frame([RawRecord(str(i), "mem", row) for i, row in enumerate(x)],
                                "features", names, expectations.feature_bounds(profile))
    assert frame.shape == (2000, 2)
    report = quality.validate({"inputs": frame}, {"inputs": expectations.inputs_suite(profile, [2000])},
                              str(tmp_path / "docs"))
    by_column = {c.column: c for c in report.checks}
    assert len(report.checks) == 2 and not report.success
    assert by_column["missing_share"].observed == "1 feature: c7 (0.1)"
    assert by_column["outside_range_share"].observed.startswith("20 features: c100 (1), c101 (1)")
    assert by_column["outside_range_share"].observed.endswith("and 12 more")
    assert (tmp_path / "docs" / "index.html").exists()


def test_images_of_another_shape_are_named_by_their_shape(tmp_path):
    """RGBA images given to a grayscale model: the shape check shows the shapes it did not expect."""
    import io

    from PIL import Image

    from vigil.pipeline.records import RawRecord
    from vigil.pipeline.report import quality
    from vigil.schemas import expectations

    def png(mode: str, size: int) -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, (size, size)).save(buffer, format="PNG")
        return buffer.getvalue()
    images = [png("L", 16)] * 6 + [png("RGBA", 16)] * 3 + [png("L", 8)]
    frame = quality.input_frame([RawRecord(str(i), "mem", b) for i, b in enumerate(images)], "image",
                                [], {})
    report = quality.validate({"inputs": frame},
                              {"inputs": expectations.inputs_suite({"kind": "image"}, [16, 16, 1])},
                              str(tmp_path / "docs"))
    [check] = report.checks
    assert not check.success and check.observed == "40% unexpected, such as 16x16x4, 8x8x1"
    # Training's stored shapes, where `vigil train` recorded them, are what is expected.
    [trained] = expectations.inputs_suite({"kind": "image"}, [8, 8, 1], ["16x16x1", "16x16x4"])
    assert trained["kwargs"]["value_set"] == ["16x16x1", "16x16x4"]
    assert expectations.inputs_suite({"kind": "image"}, [8, 8, 1], "varied") == []


def test_training_report_is_in_the_bundle(features_registry):
    from vigil.models import registry
    d = Path(registry.version_dir(features_registry["registry"], "cardio", "0001"))
    page = (d / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") >= 3
    assert "report.html" in json.loads((d / "manifest.json").read_text())["files"]


def test_report_renders_in_headless_chromium(defective_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it); cannot render the page")
    run, _ = defective_run
    page = run / "report" / "index.html"
    text = page.read_text()
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', text):
        assert (page.parent / ref).resolve().exists(), f"{ref} does not resolve"
    # Self-contained (nothing from the network), and at a glance: the summary and the
    # failed checks come before the plots, the full table after them, folded.
    assert not re.search(r'(?:src|href)="https?:', text)
    assert text.index("read</div>") < text.index("Data quality:") < text.index("plots/scores.png") \
        < text.index("<details>")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert "Data quality" in dom.stdout and dom.stdout.count("<img") == 3
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1400,2000", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"


def test_anomaly_rate_history_compares_like_with_like(tmp_path):
    """Only earlier runs of the same model at the same target FPR share the history plot."""
    from vigil.pipeline import commit
    from vigil.pipeline.report.run_report import _history
    for run_id, model, target, anomalies in [("a", "m", 0.01, 1), ("b", "other", 0.01, 50),
                                             ("c", "m", 0.05, 5), ("d", "m", 0.01, 2)]:
        d = tmp_path / run_id
        d.mkdir()
        (d / commit.MANIFEST).write_text(json.dumps({
            "model": {"name": model}, "thresholds": {"target_fpr": target},
            "counts": {"anomalies": anomalies, "scored": 100}}))
        (d / commit.SUCCESS).write_text("")
    assert _history(str(tmp_path / "d"), "m", 0.01) == [("a", 0.01), ("d", 0.02)]
