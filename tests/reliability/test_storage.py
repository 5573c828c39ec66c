"""Real storage failures and runs side by side: one line naming the path, nothing half-done.

File-system cases use real mounts (a read-only and a nearly full tmpfs); they need root,
as CI has, and skip without it.  Each run that goes ahead ends with the run invariant.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import helpers
from vigil.pipeline import commit


@pytest.fixture(scope="module")
def shards(features_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("storage_inputs")
    x, y = features_registry["x"], features_registry["y"]
    return root, sorted(helpers.table_shards(root, x[:300], y[:300], shards=3))


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only) -> a fresh tmpfs folder; unmounted afterwards."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _one_error_line(res) -> str:
    lines = res.output.strip().splitlines()
    assert lines and lines[-1].startswith("vigil: error:"), res.output
    assert not any("Traceback" in line for line in lines), res.output
    return lines[-1]


@pytest.mark.parametrize("under", ["runs", ""], ids=["under-a-file", "a-file"])
def test_output_that_is_or_is_under_a_regular_file_stops_before_scoring(features_registry, shards,
                                                                        tmp_path, under):
    root, _ = shards
    (tmp_path / "plain").write_text("not a folder")
    out = tmp_path / "plain" / under if under else tmp_path / "plain"
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out)
    assert res.exit_code == 2
    line = _one_error_line(res)
    assert line.startswith(f"vigil: error: --output {out}: not a folder")
    assert line.endswith(f"({tmp_path / 'plain'} is a file)" if under else "not a folder")
    assert (tmp_path / "plain").read_text() == "not a folder"


def test_a_registry_under_a_regular_file_stops_training_before_it_trains(tmp_path, caplog):
    from click.testing import CliRunner

    from vigil.jobs.cli import cli
    x, _ = helpers.cardio()
    helpers.table_shards(tmp_path / "train", x[:200], shards=1)
    (tmp_path / "plain").write_text("not a folder")
    caplog.set_level("INFO", logger="vigil.train")
    res = CliRunner().invoke(cli, ["train", "--input", str(tmp_path / "train" / "*.parquet"),
                                   "--registry", str(tmp_path / "plain" / "reg"), "--name", "m"])
    assert res.exit_code == 2
    assert _one_error_line(res) == (f"vigil: error: --registry {tmp_path / 'plain' / 'reg'}: not a "
                                    f"folder ({tmp_path / 'plain'} is a file)")
    assert not any("training on" in r.getMessage() for r in caplog.records)


MULTI_PROCESS = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
RUNNERS = pytest.mark.parametrize("runner", [(), MULTI_PROCESS], ids=["in-process", "multi-process"])


@RUNNERS
def test_read_only_file_system(features_registry, shards, tmpfs, runner):
    root, _ = shards
    out = tmpfs("1m", read_only=True) / "runs"
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, *runner)
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert str(out) in line and "Read-only file system (EROFS)" in line, line


def test_evaluating_a_run_on_read_only_storage_shows_the_metrics_then_names_the_file(
        features_registry, tmp_path, tmpfs):
    import numpy as np
    from click.testing import CliRunner

    from vigil.jobs.cli import cli
    x, y = features_registry["x"], features_registry["y"]
    rows = np.concatenate([np.flatnonzero(y == 0)[:200], np.flatnonzero(y == 1)[:40]])
    helpers.table_shards(tmp_path / "labelled", x[rows], y[rows], shards=1)
    point = tmpfs("20m")
    res = helpers.score_cli(features_registry, [f"{tmp_path}/labelled/*.parquet"], point)
    assert res.exit_code == 0, res.output
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
    res = CliRunner().invoke(cli, ["evaluate", str(point / "run1"), "--label-column", "label",
                                   "--normal-values", "0"])
    assert res.exit_code == 1 and "anomaly_score" in res.output and "AUROC" in res.output
    line = _one_error_line(res)
    assert f"{point}/run1/evaluation.json" in line and "Read-only file system" in line, line


@RUNNERS
def test_full_file_system_while_the_pipeline_writes(features_registry, shards, tmpfs, runner):
    """The error happens in a worker (another process, in multi-process mode); Beam
    passes on only its text, which still names the errno."""
    root, _ = shards
    fs = tmpfs("16k")
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], fs / "runs", *runner)
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "No space left on device (ENOSPC)" in line and str(fs / "runs") in line, line
    assert "nothing was published" in line and "staging folder was removed" in line, line
    assert sorted(p.name for p in (fs / "runs").iterdir()) == []


def test_full_file_system_while_the_report_is_written(features_registry, shards, tmpfs):
    """Room for the run but not its report: the run is published, and the line says so."""
    from click.testing import CliRunner

    from vigil.jobs.cli import cli
    root, files = shards
    probe = tmpfs("64m")
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], probe / "runs")
    assert res.exit_code == 0, res.output
    used = sum(p.stat().st_size + 4096 for p in (probe / "runs").rglob("*"))
    fs = tmpfs(str(used + 16384))
    res = CliRunner().invoke(cli, ["score", "--input", f"{root}/*.parquet", "--registry",
                                   features_registry["registry"], "--name", "cardio", "--output",
                                   str(fs / "runs"), "--run-id", "night"])
    assert res.exit_code == 1, res.output
    line = _one_error_line(res)
    assert f"run {fs}/runs/night is published, but its report could not be written" in line, line
    assert "No space left on device (ENOSPC)" in line, line
    helpers.check_invariant(str(fs / "runs" / "night"), files)


def _vigil(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from vigil.jobs.cli import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _score_args(reg: dict, root: Path, out: Path, run_id: str) -> list[str]:
    return ["score", "--input", f"{root}/*.parquet", "--registry", reg["registry"], "--name",
            reg["name"], "--output", str(out), "--run-id", run_id, "--no-report",
            "--runner", "FnApiRunner"]


def _writing(reg: dict, root: Path, out: Path, run_id: str) -> subprocess.Popen:
    """A `vigil score` in another process, returned once it writes its staging folder."""
    proc = _vigil(*_score_args(reg, root, out, run_id))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(out.glob(f".staging-{run_id}-*")):
            return proc
        time.sleep(0.02)
    pytest.fail(f"run {run_id}'s staging folder never appeared (exit {proc.poll()})")


def _finishes(proc: subprocess.Popen) -> None:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr


def test_a_run_never_touches_another_run_ids_folders(features_registry, shards, tmp_path):
    """Run 'night' starts while run 'night-eu' writes: both publish, each its own."""
    root, files = shards
    out = tmp_path / "out"
    other = _writing(features_registry, root, out, "night-eu")
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, run_id="night")
    assert res.exit_code == 0, res.output
    _finishes(other)
    assert sorted(p.name for p in out.iterdir()) == ["night", "night-eu"]
    for run_id in ("night", "night-eu"):
        helpers.check_invariant(str(out / run_id), files)


def test_two_runs_of_one_id_at_once_publish_once(features_registry, shards, tmp_path):
    root, files = shards
    out = tmp_path / "out"
    first = _writing(features_registry, root, out, "same")
    second = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, run_id="same")
    assert second.exit_code == 1
    line = _one_error_line(second)
    assert f"run same is being written to {out} by process {first.pid}" in line, line
    _finishes(first)
    assert sorted(p.name for p in out.iterdir()) == ["same"]
    helpers.check_invariant(str(out / "same"), files)


def test_a_lock_left_by_a_dead_process_is_taken_over(features_registry, shards, tmp_path):
    root, files = shards
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import json
    import socket
    (out / ".lock-night").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                                 "token": "x", "started_at": "earlier"}))
    (out / ".staging-night-0123abcd").mkdir()          # what the dead run left
    (out / ".staging-nightly-0123abcd").mkdir()        # another id's: never touched
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, run_id="night")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [".staging-nightly-0123abcd", "night"]
    helpers.check_invariant(str(out / "night"), files)


def test_clean_stale_matches_names_exactly(tmp_path):
    for name in (".staging-a-0123abcd", ".staging-a-b-0123abcd", "a.replaced-0123abcd",
                 "a-b.replaced-0123abcd", ".staging-a-0123abcd-x", "a"):
        (tmp_path / name).mkdir()
    commit.clean_stale(str(tmp_path), "a")
    assert sorted(os.listdir(tmp_path)) == [".staging-a-0123abcd-x", ".staging-a-b-0123abcd", "a",
                                            "a-b.replaced-0123abcd"]


def test_counting_a_published_run_leaves_no_thread_to_abort_the_exit(tmp_path):
    """The anomaly count is read last, just before `vigil score` exits: a reader thread still
    holding the file's buffers then killed the process at exit (SIGABRT, exit 134) after a
    complete run, in about one bare count of four. Eight processes count and exit."""
    scores = tmp_path / "scores"
    scores.mkdir()
    flags = [i % 7 == 0 for i in range(5000)]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(5000)], "is_anomaly": flags}),
                   scores / "part-00000-of-00001.parquet", row_group_size=100)
    code = f"from vigil.pipeline import commit; print(commit.count_true({str(scores)!r}, 'is_anomaly'))"
    for _ in range(4):
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert (proc.returncode, stdout.strip()) == (0, str(sum(flags))), stderr[-2000:]


def test_sigterm_while_a_run_writes_removes_its_staging_folder_and_lock(features_registry, shards,
                                                                        tmp_path):
    """A scheduler's timeout stops a run with SIGTERM, and the next run may start on another
    host, which cannot take a lock over: the stopped run leaves nothing behind."""
    root, _ = shards
    out = tmp_path / "out"
    proc = _writing(features_registry, root, out, "night")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vigil: error: stopped by SIGTERM") and "nothing was published" in last, stderr
    assert list(out.iterdir()) == []
