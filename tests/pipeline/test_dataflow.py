"""`vigil score` translated for Dataflow with Beam's ``--dry_run``: no network, nothing run.

The job is built, every DoFn and the model handler pickled into the job's graph, and
the workers' package is the sdist Beam builds from ``--setup_file``; vigil then says what
was translated and neither takes a lock nor writes or publishes anything.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from tests import helpers

REPO = Path(__file__).resolve().parents[2]
DATAFLOW = ["--runner", "DataflowRunner", "--project", "vigil-test", "--region", "europe-west1",
            "--temp_location", "gs://vigil-test-bucket/tmp", "--setup_file", str(REPO / "setup.py"),
            "--dry_run", "True"]


def _vigil(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "vigil"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_dataflow_dry_run_translates_the_job_and_publishes_nothing(features_registry, tmp_path):
    helpers.table_shards(tmp_path / "in", features_registry["x"][:40])
    score = ["score", "--input", "in/*.parquet", "--registry", features_registry["registry"],
             "--name", "cardio", "--output", "out", "--run-id", "r1"]

    refused = _vigil(tmp_path, *score, *DATAFLOW)
    assert refused.returncode == 2, refused.stderr
    assert "DataflowRunner runs workers that may not see this machine's files" in refused.stderr
    assert "in/*.parquet is a local path" in refused.stderr

    res = _vigil(tmp_path, *score, *DATAFLOW, "--workers-see-local-paths")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("dry run:"))
    assert "translated for DataflowRunner" in line and "nothing was written or published" in line
    for step in ("Read", "Decode", "Score", "ToTable", "WriteScores", "WriteDeadLetters", "WriteStats"):
        assert f" {step}," in line or f" {step})" in line, (step, line)
    installs = dict(x.strip().split(": ", 1) for x in res.stdout.splitlines()
                    if x.startswith("  workers install "))
    sdist = Path(installs["workers install workflow.tar.gz"])
    assert sdist.name.startswith("vigil_anomaly-") and sdist.name.endswith(".tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"setup.py", "pyproject.toml", "pipeline/run.py", "pipeline/dask_runner.py",
            "models/scoring.py", "jobs/cli.py", "schemas/tables.py"} <= names
    assert not (tmp_path / "out").exists()     # no lock, no staging folder, no run
