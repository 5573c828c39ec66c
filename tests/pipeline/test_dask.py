"""`vigil score --runner DaskRunner` against a dask.distributed cluster of two worker processes.

The scheduler and its workers run as separate processes, as a user's cluster would.  The
run must equal the local one record for record: scores, dead letters and counts (see
vigil.pipeline.dask_runner for what Beam's own DaskRunner gets wrong).
"""
from __future__ import annotations

import pytest

from tests import helpers, servers
from vigil.models.runtime import SCORING_ENV


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A scheduler and two single-threaded worker processes; the Beam flags that use them.

    The workers' environment has none of vigil's TensorFlow settings, as a user's cluster's
    would not: they get them from the run (``--beam_plugins``, through a dask worker plugin),
    or their image scores would differ from the local run's in the last bits."""
    port = servers.free_port()
    bare = {k: v for k, v in servers.this_environment().items() if k not in SCORING_ENV}
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask-logs")
    with servers.running({"scheduler": (["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                         "--port", str(port), "--no-dashboard"], port)}, logs), \
            servers.running({"workers": (["-m", "distributed.cli.dask_worker", address,
                                          "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                                          "--memory-limit", "4GiB"], port)}, logs, bare):
        _wait_for_workers(address, 2)
        yield ["--runner", "DaskRunner", "--dask_client_address", address, "--workers-see-local-paths"]


def _wait_for_workers(address: str, n: int) -> None:
    from dask.distributed import Client
    with Client(address, timeout=60) as client:
        client.wait_for_workers(n, timeout=120)


def test_tables_on_dask_equal_the_local_run(features_registry, dask_cluster, tmp_path, monkeypatch):
    x, y = features_registry["x"], features_registry["y"]
    files = helpers.table_shards(tmp_path / "in", x[:300], y[:300], shards=3)
    helpers.bad_rows(tmp_path / "in" / "bad.parquet", x[300:], y[300:])
    (tmp_path / "in" / "notes.txt").write_text("a stray file the glob does not match")
    (tmp_path / "in" / "torn.parquet").write_bytes(b"PAR1 not a parquet file")
    files += [str(tmp_path / "in" / "bad.parquet"), str(tmp_path / "in" / "torn.parquet")]
    local, remote = helpers.score_on_both(features_registry, "in/*.parquet", tmp_path, dask_cluster,
                                          monkeypatch, extra=["--allow-uncounted-files"])
    helpers.same_runs(local, remote)
    for run in (local, remote):
        helpers.check_invariant(run, sorted(files))
    manifest = helpers.read_run(remote)[2]
    assert manifest["counts"]["scored"] == 302 and manifest["counts"]["file_failures"] == 1


def test_images_on_dask_equal_the_local_run(images_registry, dask_cluster, tmp_path, monkeypatch):
    images, labels = helpers.mnist(40, offset=1080)
    files = helpers.image_shards(tmp_path / "in", images, labels, shards=2)
    local, remote = helpers.score_on_both(images_registry, "in/*.tfrecord", tmp_path, dask_cluster,
                                          monkeypatch)
    helpers.same_runs(local, remote)
    for run in (local, remote):
        helpers.check_invariant(run, sorted(files))
