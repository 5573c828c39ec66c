"""`vigil score` on Beam's PortableRunner with EXTERNAL workers in separate processes.

This is the protocol Flink, Spark and Dataflow Runner v2 workers speak: a job service
runs the pipeline and a worker pool starts SDK worker processes.  The run must equal the
local one record for record, relative input globs included (paths are resolved at launch).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import helpers, servers
from vigil.models.runtime import apply_scoring_env


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """A job service and an external worker pool on free localhost ports; the Beam flags.

    Beam's Python worker pool without a container starts SDK harnesses that skip the worker
    boot (``--beam_plugins``), so it is started with vigil's TensorFlow settings, as
    docs/scaling.md tells users to."""
    env = servers.this_environment()
    apply_scoring_env(env)
    with servers.portable_runner(tmp_path_factory.mktemp("portable-logs"), env) as (_, flags):
        yield flags


def test_tables_on_external_workers_equal_the_local_run(features_registry, portable, tmp_path,
                                                        monkeypatch):
    x, y = features_registry["x"], features_registry["y"]
    files = helpers.table_shards(tmp_path / "in", x[:200], y[:200], shards=3)
    helpers.bad_rows(tmp_path / "in" / "bad.parquet", x[200:], y[200:])
    files.append(str(tmp_path / "in" / "bad.parquet"))
    local, remote = helpers.score_on_both(features_registry, "in/*.parquet", tmp_path, portable, monkeypatch)
    helpers.same_runs(local, remote)
    for run in (local, remote):
        helpers.check_invariant(run, sorted(files))
    assert helpers.read_run(remote)[2]["counts"]["dead_lettered"] == 2


def test_images_on_external_workers_equal_the_local_run(images_registry, portable, tmp_path,
                                                        monkeypatch):
    images, labels = helpers.mnist(40, offset=1080)
    files = helpers.image_shards(tmp_path / "in", images, labels, shards=2)
    local, remote = helpers.score_on_both(images_registry, "in/*.tfrecord", tmp_path, portable, monkeypatch)
    helpers.same_runs(local, remote)
    for run in (local, remote):
        helpers.check_invariant(run, sorted(files))


def _score_command(reg: dict) -> list[str]:
    """``vigil score`` as cron runs it: its own process, relative input glob, no report."""
    return [str(Path(sys.executable).parent / "vigil"), "score", "--input", "in/*.parquet",
            "--registry", reg["registry"], "--name", reg["name"], "--output", "out", "--run-id", "r1",
            "--no-report"]


def test_workers_that_cannot_start_end_the_run_in_bounded_time(features_registry, tmp_path):
    """A pool whose ``python`` cannot run Beam's worker: one line, exit 1, nothing left.

    Without the watch, the job service waits for the worker for minutes and then the
    run ends in a gRPC DEADLINE_EXCEEDED traceback.
    """

    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "python").write_text("#!/bin/sh\necho 'No module named apache_beam' >&2\nexit 1\n")
    (broken / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{broken}{os.pathsep}{os.environ['PATH']}")
    helpers.table_shards(tmp_path / "in", features_registry["x"][:50])
    logs = tmp_path / "logs"
    logs.mkdir()
    with servers.portable_runner(logs, env) as (_, flags):
        started = time.monotonic()
        res = subprocess.run([*_score_command(features_registry), *flags, "--worker-start-timeout", "20"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
        took = time.monotonic() - started
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no worker of the job started within 20 s" in lines[0], res.stderr
    assert "nothing was published" in lines[0] and "Traceback" not in res.stderr
    assert took < 120, took          # the job service alone waits about 310 s
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def _stop_while_a_worker_reads(reg: dict, tmp_path: Path, stop) -> tuple[subprocess.Popen, str, object]:
    """Score 22,000 rows on a fresh job service and worker pool; once a worker reads, call
    ``stop(pool_procs, run)`` (until it returns something true).  Returns the finished run,
    its stderr and what ``stop`` returned."""
    x, y = reg["x"], reg["y"]
    helpers.table_shards(tmp_path / "in", np.tile(x, (12, 1)), np.tile(y, 12), shards=8)
    logs = tmp_path / "logs"
    logs.mkdir()
    with servers.portable_runner(logs) as (procs, flags):
        run = subprocess.Popen([*_score_command(reg), *flags], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stopped = None
        deadline = time.monotonic() + 180
        while run.poll() is None and not stopped and time.monotonic() < deadline:
            if list((tmp_path / "out").glob(".staging-r1-*/_workers/*")):   # a worker is reading
                stopped = stop(procs, run)
            time.sleep(0.2)
        _, err = run.communicate(timeout=180)
    return run, err, stopped


def test_a_worker_that_dies_mid_run_ends_it_in_one_line(features_registry, tmp_path):
    """The pool's SDK worker is killed while it scores: exit 1, the cause named, nothing left."""

    def kill_workers(procs, run):
        killed = servers.children(procs["pool"].pid)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        return killed

    run, err, killed = _stop_while_a_worker_reads(features_registry, tmp_path, kill_workers)
    assert killed, "the run ended before a worker could be killed"
    assert run.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "a worker process died or lost its connection to the job" in lines[0]
    assert "nothing was published" in lines[0] and "staging folder was removed" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_sigterm_stops_the_launcher_in_one_line_and_frees_the_run_id(features_registry, tmp_path):
    """The launcher is stopped (a scheduler's timeout) while workers score: exit 143, one
    line, the job asked to cancel and the lock removed, so the next run (perhaps on another
    host) can start.  Beam's own job service does not stop a cancelled job (its ``cancel``
    only sets the state), so what its workers still write is not checked here."""

    def terminate(procs, run):
        run.send_signal(signal.SIGTERM)
        return True

    run, err, _ = _stop_while_a_worker_reads(features_registry, tmp_path, terminate)
    assert run.returncode == 143, err
    assert not (tmp_path / "out" / ".lock-r1").exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vigil: error: stopped by SIGTERM"), err
    assert "nothing was published" in lines[0] and "staging folder was removed" in lines[0]
