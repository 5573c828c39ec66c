"""Faults and re-runs: retried steps, killed processes, crashed publishes, shard counts.

Every test ends with the run invariant (``helpers.check_invariant``): the published
output holds each input record's key exactly once, counted by an independent scan.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tests import helpers
from vigil.jobs.cli import cli
from vigil.pipeline import commit


@pytest.fixture(scope="module")
def shards(features_registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_inputs")
    x, y = features_registry["x"], features_registry["y"]
    files = helpers.table_shards(root, x[:400], y[:400], shards=4)
    return root, sorted(files)


@pytest.fixture(scope="module")
def clean_run(features_registry, shards, tmp_path_factory):
    root, files = shards
    out = tmp_path_factory.mktemp("clean")
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out)
    assert res.exit_code == 0, res.output
    helpers.check_invariant(f"{out}/run1", files)
    return f"{out}/run1"


def test_step_failing_once_is_retried_without_duplicates(features_registry, shards, clean_run,
                                                          tmp_path, monkeypatch):
    import vigil.pipeline.readers as readers
    root, files = shards
    marker = tmp_path / "failed-once"
    real_decode = readers.decode_rows

    def flaky(ids, *args):
        if "row-00007" in ids and not marker.exists():
            marker.touch()
            raise RuntimeError("injected worker fault")
        return real_decode(ids, *args)

    monkeypatch.setattr(readers, "decode_rows", flaky)
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], tmp_path / "out",
                            "--runner", "BundleBasedDirectRunner")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert marker.exists(), "the fault was never injected"
    helpers.check_invariant(f"{tmp_path}/out/run1", files)
    assert helpers.scores_equal(clean_run, f"{tmp_path}/out/run1")


def _vigil(*args: str) -> list[str]:
    return [sys.executable, "-c", "from vigil.jobs.cli import main; main()", *args]


def test_sigkill_while_writing_publishes_nothing_and_rerun_is_clean(
        features_registry, shards, clean_run, tmp_path):
    root, files = shards
    out = tmp_path / "out"
    args = ["score", "--input", f"{root}/*.parquet", "--registry", features_registry["registry"],
            "--name", "cardio", "--output", str(out), "--run-id", "run1", "--no-report"]
    proc = subprocess.Popen(_vigil(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.getcwd(), start_new_session=True)
    deadline = time.time() + 120
    # Kill as soon as the pipeline has started writing into its staging folder.
    while time.time() < deadline and proc.poll() is None:
        if any(out.glob(".staging-run1-*/*/*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "run1").exists()
    staging = list(out.glob(".staging-run1-*"))
    assert staging and not any((s / commit.SUCCESS).exists() for s in staging)
    # Readers and `vigil report` refuse the partial run.
    with pytest.raises(commit.RunError, match="_SUCCESS"):
        commit.load_run(str(staging[0]))
    res = CliRunner().invoke(cli, ["report", str(staging[0])])
    assert res.exit_code != 0 and "_SUCCESS" in res.output
    # A re-run cleans the leftovers and equals a clean run.
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out)
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.iterdir()] == ["run1"]
    helpers.check_invariant(f"{out}/run1", files)
    assert helpers.scores_equal(clean_run, f"{out}/run1")


@pytest.mark.parametrize("crash_at", ["rename", "success_marker"])
def test_crash_during_publish_leaves_nothing_readable(features_registry, shards, clean_run,
                                                       tmp_path, monkeypatch, crash_at):
    import tensorflow as tf
    root, files = shards
    out = tmp_path / "out"
    real_rename, real_open = tf.io.gfile.rename, tf.io.gfile.GFile

    def crash_rename(src, dst, *a, **k):
        if crash_at == "rename" and ".staging-" in src:
            raise OSError("injected crash while renaming")
        return real_rename(src, dst, *a, **k)

    def crash_open(path, mode="r"):
        if crash_at == "success_marker" and path.endswith(commit.SUCCESS):
            raise OSError("injected crash before _SUCCESS")
        return real_open(path, mode)

    monkeypatch.setattr(commit.tf.io.gfile, "rename", crash_rename)
    monkeypatch.setattr(commit.tf.io.gfile, "GFile", crash_open)
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out)
    assert res.exit_code == 1 and "injected crash" in res.output
    monkeypatch.undo()
    assert not commit.is_published(str(out / "run1"))
    if (out / "run1").exists():      # renamed but unmarked: refused by readers
        with pytest.raises(commit.RunError, match="_SUCCESS"):
            commit.load_run(str(out / "run1"))
    # The re-run needs no --overwrite: an unmarked folder is not a run.
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out)
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.iterdir()] == ["run1"]
    helpers.check_invariant(f"{out}/run1", files)
    assert helpers.scores_equal(clean_run, f"{out}/run1")


def test_rerun_with_fewer_shards_leaves_no_stale_shards(features_registry, shards, clean_run,
                                                         tmp_path):
    root, files = shards
    out = tmp_path / "out"
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, "--num-shards", "3")
    assert res.exit_code == 0, res.output
    assert len(list((out / "run1" / "scores").glob("*.parquet"))) == 3
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, "--num-shards", "1",
                            "--overwrite")
    assert res.exit_code == 0, res.output
    assert len(list((out / "run1" / "scores").glob("*.parquet"))) == 1
    assert [p.name for p in out.iterdir()] == ["run1"]
    helpers.check_invariant(f"{out}/run1", files)
    assert helpers.scores_equal(clean_run, f"{out}/run1")


def test_dead_letters_over_the_limit_publish_nothing(features_registry, shards, tmp_path):
    root, files = shards
    bad = tmp_path / "bad.parquet"
    table = pq.read_table(files[0])
    nan_col = pa.array([float("nan")] * table.num_rows)
    pq.write_table(table.set_column(table.schema.get_field_index("f0"), "f0", nan_col), bad)
    inputs = [f"{root}/*.parquet", str(bad)]
    res = helpers.score_cli(features_registry, inputs, tmp_path / "out")
    assert res.exit_code == 3 and "max-bad-fraction" in res.output
    assert not (tmp_path / "out" / "run1").exists()
    res = helpers.score_cli(features_registry, inputs, tmp_path / "out", "--max-bad-fraction", "0.3")
    assert res.exit_code == 0, res.output
    helpers.check_invariant(f"{tmp_path}/out/run1", [*files, str(bad)])


def test_empty_input_is_a_valid_zero_row_run(features_registry, shards, tmp_path):
    _, files = shards
    empty = tmp_path / "in" / "empty.parquet"
    empty.parent.mkdir()
    pq.write_table(pq.read_table(files[0]).slice(0, 0), empty)
    res = CliRunner().invoke(cli, ["score", "--input", str(empty), "--registry",
                                   features_registry["registry"], "--name", "cardio",
                                   "--output", str(tmp_path / "out"), "--run-id", "run1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    run = tmp_path / "out" / "run1"
    helpers.check_invariant(str(run), [str(empty)])
    assert helpers.read_run(str(run))[2]["counts"]["read"] == 0
    assert (run / "report" / "index.html").exists()


def test_glob_matching_nothing_stops_before_the_pipeline(features_registry, tmp_path):
    res = helpers.score_cli(features_registry, [f"{tmp_path}/missing/*.parquet"], tmp_path / "out")
    assert res.exit_code == 2
    assert f"{tmp_path}/missing/*.parquet" in res.output and "matches no files" in res.output
    assert not (tmp_path / "out").exists()


def _fail_read(monkeypatch):
    import vigil.pipeline.transforms as transforms
    monkeypatch.setattr(transforms, "read_file", lambda *a, **k: (_ for _ in ()).throw(
        OSError(5, "Input/output error", "/injected/read")))


def _fail_decode(monkeypatch):
    import vigil.pipeline.readers as readers
    monkeypatch.setattr(readers, "decode_rows", lambda *a: (_ for _ in ()).throw(
        RuntimeError("injected decode fault")))


def _fail_rows(monkeypatch):
    import vigil.pipeline.transforms as transforms
    monkeypatch.setattr(transforms, "carried_column", lambda *a: (_ for _ in ()).throw(
        RuntimeError("injected postprocess fault")))


def _fail_sink(monkeypatch):
    real = pq.ParquetWriter.write_table

    def full(self, table, *a, **k):
        if "is_anomaly" in table.schema.names:
            raise OSError(28, "No space left on device")
        return real(self, table, *a, **k)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)


def _fail_inference(monkeypatch):
    from vigil.pipeline.handler import BlockModelHandler

    def broken(self, batch, model, inference_args=None):
        raise RuntimeError("injected model fault")
    monkeypatch.setattr(BlockModelHandler, "run_inference", broken)


def _fail_dead_letter_sink(monkeypatch):
    real = pq.ParquetWriter.__init__

    def full(self, where, schema, *a, **k):      # the sink opens its file even with no rows
        if "reason" in schema.names:
            raise OSError(28, "No space left on device")
        return real(self, where, schema, *a, **k)
    monkeypatch.setattr(pq.ParquetWriter, "__init__", full)


def _fail_stats_sink(monkeypatch):
    from apache_beam.io import textio

    def full(self, file_handle, encoded_value):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(textio._TextSink, "write_encoded_record", full)


def _fail_commit(monkeypatch):
    import tensorflow as tf
    real = tf.io.gfile.rename

    def crash(src, dst, *a, **k):
        if ".staging-" in src:
            raise OSError(5, "Input/output error", src)
        return real(src, dst, *a, **k)
    monkeypatch.setattr(commit.tf.io.gfile, "rename", crash)


@pytest.mark.parametrize("stage, says", [
    (_fail_read, "/injected/read: Input/output error (EIO)"),
    (_fail_decode, "failed: RuntimeError: injected decode fault"),
    (_fail_rows, "failed: RuntimeError: injected postprocess fault"),
    (_fail_inference, "inference_failed) is above --max-bad-fraction"),
    (_fail_sink, "No space left on device (ENOSPC)"),
    (_fail_dead_letter_sink, "No space left on device (ENOSPC)"),
    (_fail_stats_sink, "No space left on device (ENOSPC)"),
    (_fail_commit, "Input/output error (EIO)"),
], ids=["read", "decode", "postprocess", "inference", "scores-sink", "dead-letter-sink", "stats-sink",
        "commit"])
def test_a_failure_at_any_stage_leaves_the_earlier_run_untouched(
        features_registry, shards, clean_run, tmp_path, monkeypatch, stage, says):
    import shutil
    root, files = shards
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(clean_run, out / "run1")
    before = sorted((p.relative_to(out), p.read_bytes()) for p in (out / "run1").rglob("*")
                    if p.is_file())
    stage(monkeypatch)
    res = helpers.score_cli(features_registry, [f"{root}/*.parquet"], out, "--overwrite")
    monkeypatch.undo()
    assert res.exit_code in (1, 3), res.output
    line = res.output.strip().splitlines()[-1]
    assert says in line and "the earlier run of this id is untouched" in line, line
    after = sorted((p.relative_to(out), p.read_bytes()) for p in (out / "run1").rglob("*")
                   if p.is_file())
    assert after == before
    for left in out.glob(".staging-*"):     # kept only for inspection, and then named
        assert str(left) in line, line
    assert not list(out.glob(".lock-*"))
    helpers.check_invariant(str(out / "run1"), files)
