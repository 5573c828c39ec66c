"""`vigil score` on Beam's PortableRunner with EXTERNAL workers in separate processes.

This is the protocol Flink, Spark and Dataflow Runner v2 workers speak: a job service
runs the pipeline and a worker pool starts SDK worker processes.  The run must equal the
local one record for record, relative input globs included (paths are resolved at launch).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {timeout} s")


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """A job service and an external worker pool on free localhost ports; the Beam flags."""
    logs = tmp_path_factory.mktemp("portable-logs")
    # Workers are started as `python` from PATH: it must be this environment's.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    job_port, pool_port = _free_port(), _free_port()
    procs = []
    try:
        for name, args in [("jobs", ["-m", "apache_beam.runners.portability.local_job_service_main",
                                     "--port", str(job_port)]),
                           ("pool", ["-m", "apache_beam.runners.worker.worker_pool_main",
                                     "--service_port", str(pool_port)])]:
            with open(logs / f"{name}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, *args], stdout=log, stderr=log, env=env,
                                              start_new_session=True))
        _wait_for_port(job_port, procs[0])
        _wait_for_port(pool_port, procs[1])
        yield ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
               "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _same_runs(local: str, remote: str) -> None:
    a_scores, a_dead, a_manifest = helpers.read_run(local)
    b_scores, b_dead, b_manifest = helpers.read_run(remote)
    order = [("source", "ascending"), ("id", "ascending")]
    assert a_scores.sort_by(order).drop(["run_id"]).to_pylist() == \
        b_scores.sort_by(order).drop(["run_id"]).to_pylist()
    dead_order = [("source", "ascending"), ("reason", "ascending"), ("message", "ascending")]
    assert a_dead.sort_by(dead_order).to_pylist() == b_dead.sort_by(dead_order).to_pylist()
    assert a_manifest["counts"] == b_manifest["counts"]


def _score_both(reg: dict, glob: str, workdir: Path, portable: list[str], monkeypatch) -> tuple[str, str]:
    monkeypatch.chdir(workdir)               # the glob is relative, as a user types it
    for run_id, flags in [("local", []), ("portable", portable)]:
        res = helpers.score_cli(reg, [glob], "out", *flags, run_id=run_id)
        assert res.exit_code == 0, res.output
    return str(workdir / "out" / "local"), str(workdir / "out" / "portable")


def test_tables_on_external_workers_equal_the_local_run(features_registry, portable, tmp_path,
                                                        monkeypatch):
    x, y = features_registry["x"], features_registry["y"]
    files = helpers.table_shards(tmp_path / "in", x[:200], y[:200], shards=3)
    bad = x[200:204].copy()
    bad[1, 2] = np.nan
    cols = {f"f{j}": bad[:, j] for j in range(x.shape[1])}
    pq.write_table(pa.table({"id": ["b0", "b1", None, "b3"], **cols, "label": y[200:204]}),
                   tmp_path / "in" / "bad.parquet")
    files.append(str(tmp_path / "in" / "bad.parquet"))
    local, remote = _score_both(features_registry, "in/*.parquet", tmp_path, portable, monkeypatch)
    _same_runs(local, remote)
    for run in (local, remote):
        helpers.check_invariant(run, sorted(files))
    assert helpers.read_run(remote)[2]["counts"]["dead_lettered"] == 2


def test_images_on_external_workers_equal_the_local_run(images_registry, portable, tmp_path,
                                                        monkeypatch):
    images, labels = helpers.mnist(40, offset=1080)
    files = helpers.image_shards(tmp_path / "in", images, labels, shards=2)
    local, remote = _score_both(images_registry, "in/*.tfrecord", tmp_path, portable, monkeypatch)
    _same_runs(local, remote)
    for run in (local, remote):
        helpers.check_invariant(run, sorted(files))
