"""Publishing a run: count what was written, check the books, then make it visible at once.

The pipeline writes into ``<output>/.staging-<run_id>-<nonce>/``.  After it finishes, the
driver counts rows from the Parquet footers and per-file read stats, checks
``read == scored + dead_lettered`` and the bad fraction, writes ``manifest.json`` into
the staging folder, renames it to ``<output>/<run_id>`` (an older run of the same id is
moved aside first and deleted after) and writes ``_SUCCESS`` last.  A run that fails any
check leaves nothing under ``<output>/<run_id>``; readers refuse folders without
``_SUCCESS``, and a re-run replaces such a folder without needing ``--overwrite``.
"""
from __future__ import annotations

import json
import uuid

import pyarrow.parquet as pq
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"


class RunError(Exception):
    """The run finished but must not be published; the message says why."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def staging_dir(output: str, run_id: str) -> str:
    return f"{output.rstrip('/')}/.staging-{run_id}-{uuid.uuid4().hex[:8]}"


def run_dir(output: str, run_id: str) -> str:
    return f"{output.rstrip('/')}/{run_id}"


def parquet_files(directory: str) -> list[str]:
    if not tf.io.gfile.isdir(directory):
        return []
    return sorted(f"{directory}/{n}" for n in tf.io.gfile.listdir(directory) if n.endswith(".parquet"))


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def count_rows(directory: str) -> int:
    total = 0
    for path in parquet_files(directory):
        with _open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def count_true(directory: str, column: str) -> int:
    total = 0
    for path in parquet_files(directory):
        with _open(path) as f:
            table = pq.read_table(f, columns=[column])
        total += int(sum(table.column(column).to_pylist()))
    return total


def read_stats(directory: str) -> list[dict]:
    """Per-file read stats written by the pipeline (JSON lines)."""
    out = []
    if not tf.io.gfile.isdir(directory):
        return out
    for name in sorted(tf.io.gfile.listdir(directory)):
        with tf.io.gfile.GFile(f"{directory}/{name}", "r") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def tally(staging: str) -> tuple[dict, list[dict]]:
    """Counts of a finished pipeline, and the per-file stats."""
    stats = read_stats(f"{staging}/_stats")
    records = sum(s["records"] for s in stats)
    file_failures = sum(1 for s in stats if not s["fully_read"])
    scored = count_rows(f"{staging}/scores")
    dead = count_rows(f"{staging}/dead_letter")
    counts = {"files": len(stats), "records_read": records, "file_failures": file_failures,
              "read": records + file_failures, "scored": scored, "dead_lettered": dead,
              "anomalies": count_true(f"{staging}/scores", "is_anomaly") if scored else 0}
    return counts, stats


def check_books(counts: dict, max_bad_fraction: float, n_files: int, exit_code_bad: int) -> None:
    """The run accounts for every record, and the bad fraction is under its limit."""
    if counts["files"] != n_files:
        raise RunError(f"{n_files} input files but {counts['files']} were read; not publishing")
    if counts["read"] != counts["scored"] + counts["dead_lettered"]:
        raise RunError(f"read {counts['read']} != scored {counts['scored']} + dead-lettered "
                       f"{counts['dead_lettered']}; records were lost, not publishing")
    if counts["read"]:
        bad = counts["dead_lettered"] / counts["read"]
        counts["bad_fraction"] = bad
        if bad > max_bad_fraction:
            raise RunError(f"{counts['dead_lettered']} of {counts['read']} records dead-lettered "
                           f"({bad:.1%}) is above --max-bad-fraction {max_bad_fraction:.1%}; "
                           "not publishing",
                           exit_code_bad)


def publish(staging: str, final: str, manifest: dict) -> None:
    """Write the manifest, rename staging to the run folder, then write _SUCCESS.

    _SUCCESS comes last because a folder rename is not atomic on object stores (GCS
    copies then deletes): readers trust only _SUCCESS, so a crash at any point leaves
    nothing they will read, and the next run of this id replaces what is left.
    """
    if tf.io.gfile.isdir(f"{staging}/_stats"):
        tf.io.gfile.rmtree(f"{staging}/_stats")
    with tf.io.gfile.GFile(f"{staging}/{MANIFEST}", "w") as f:
        json.dump(manifest, f, indent=1, default=str)
    trash = None
    if tf.io.gfile.exists(final):
        trash = f"{final.rstrip('/')}.replaced-{uuid.uuid4().hex[:8]}"
        tf.io.gfile.rename(final, trash)
    tf.io.gfile.rename(staging, final)
    with tf.io.gfile.GFile(f"{final}/{SUCCESS}", "w") as f:
        f.write("")
    if trash:
        tf.io.gfile.rmtree(trash)


def is_published(directory: str) -> bool:
    return tf.io.gfile.exists(f"{directory.rstrip('/')}/{SUCCESS}")


def clean_stale(output: str, run_id: str) -> None:
    """Remove staging and replaced folders that an earlier crashed run of this id left."""
    if not tf.io.gfile.isdir(output):
        return
    for name in tf.io.gfile.listdir(output):
        name = name.rstrip("/")
        if name.startswith(f".staging-{run_id}-") or name.startswith(f"{run_id}.replaced-"):
            tf.io.gfile.rmtree(f"{output.rstrip('/')}/{name}")


def require_published(directory: str) -> str:
    """The run folder, or RunError if it has no _SUCCESS (a partial or failed run)."""
    directory = directory.rstrip("/")
    if not tf.io.gfile.isdir(directory):
        raise RunError(f"{directory}: no such run folder")
    if not is_published(directory):
        raise RunError(f"{directory}: has no {SUCCESS} marker; the run did not finish "
                       "publishing and must not be read (re-run it)")
    return directory


def load_run(directory: str):
    """(scores table, run manifest) of a published run."""
    import pyarrow.dataset as ds
    directory = require_published(directory)
    with tf.io.gfile.GFile(f"{directory}/{MANIFEST}", "r") as f:
        manifest = json.load(f)
    files = parquet_files(f"{directory}/scores")
    table = ds.dataset(files, format="parquet").to_table() if files else None
    return table, manifest
