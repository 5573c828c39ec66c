"""Publishing a run: count what was written, check the books, then make it visible at once.

A run first takes ``<output>/.lock-<run_id>`` (created exclusively, naming its process),
so two runs of one id never write at once, and it only ever removes folders of its own
exact run id.  The pipeline writes into ``<output>/.staging-<run_id>-<nonce>/``.  After it
finishes, the driver counts rows from the Parquet footers and per-file read stats, checks
``read == scored + dead_lettered`` and the bad fraction, writes ``manifest.json`` into
the staging folder, renames it to ``<output>/<run_id>`` (an older run of the same id is
moved aside first and deleted after) and writes ``_SUCCESS`` last.  A run that fails any
check leaves nothing under ``<output>/<run_id>``; readers refuse folders without
``_SUCCESS``, and a re-run replaces such a folder without needing ``--overwrite``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import socket
import sys
import uuid
from collections import Counter

import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from vigil.schemas.manifest import strict_json

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
STATS_DIR = "_stats"        # per-file read stats, in the staging folder only
WORKERS_DIR = "_workers"    # one empty file per started worker, in the staging folder only


class RunError(Exception):
    """The run cannot be published (or cannot start); the message says why."""


class BadRecordsError(RunError):
    """The run finished, but too many of its records were lost to publish it."""


NONCE = 8   # hex digits that make a staging or replaced folder's name unique


def staging_dir(output: str, run_id: str) -> str:
    """A fresh staging folder name for a run: ``<output>/.staging-<run_id>-<nonce>``."""
    return f"{output.rstrip('/')}/.staging-{run_id}-{uuid.uuid4().hex[:NONCE]}"


def storage_failure(exc: BaseException, where: str | None = None) -> str | None:
    """One line naming the path and what the file system said, if ``exc`` is a storage error.

    ``where`` names the folder being written when the error itself names no path (a full
    disk says only "No space left on device").

    Beam's runners re-raise a worker's error as a ``RuntimeError`` that keeps only its text
    ("OSError: [Errno 28] No space left on device: '/x' [while running 'WriteScores/...']"),
    so the text is read as well as the chain of causes.  TensorFlow's file-system errors
    (``tf.io.gfile`` on gs://, s3://) count too; TensorFlow is looked up, not imported.
    """
    tf_errors = getattr(sys.modules.get("tensorflow"), "errors", None)
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno is not None:
            return _describe(exc.errno, exc.strerror or str(exc), exc.filename or where)
        if isinstance(exc, OSError) or (tf_errors is not None and isinstance(exc, tf_errors.OpError)):
            return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        found = re.search(r"\[Errno (\d+)\] ([^:\]\[']+?)(?:: '([^']*)')?(?: \[while running|$|\n)",
                          str(exc))
        if found:
            return _describe(int(found.group(1)), found.group(2), found.group(3) or where)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _describe(code: int, meaning: str, path: str | None) -> str:
    name = errno.errorcode.get(code, f"errno {code}")
    return f"{path}: {meaning} ({name})" if path else f"{meaning} ({name})"


def discard(directory: str) -> str:
    """Remove a folder of a failed run; the clause to end the error line with."""
    try:
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)
        return "its staging folder was removed"
    except Exception:  # noqa: BLE001 - the storage that failed may refuse this too
        return f"its staging folder {directory} is left behind (remove it)"


@contextlib.contextmanager
def run_lock(output: str, run_id: str):
    """Hold ``<output>/.lock-<run_id>`` while a run of that id is written.

    Local outputs take the lock with an exclusive create, so two launches cannot both
    hold it; a lock whose process is gone (same host, no such pid) is stale and taken
    over.  On object stores the check and the write are two steps, so two launches of one
    id in the same second are not excluded there.
    """
    path = f"{output.rstrip('/')}/.lock-{run_id}"
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
             "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        if _create_exclusive(path, json.dumps(owner)):
            break
        holder = _read_lock(path)
        if holder is not None and not _is_stale(holder):
            raise RunError(f"run {run_id} is being written to {output} by process "
                           f"{holder.get('pid')} on {holder.get('host')} since "
                           f"{holder.get('started_at')}; wait for it, or pick another --run-id "
                           f"(if that process is gone, remove {path})")
        with contextlib.suppress(Exception):   # stale: another launch may take it first
            tf.io.gfile.remove(path)
    else:
        raise RunError(f"could not take the lock {path}; another launch of run {run_id} keeps it")
    try:
        yield owner
    finally:
        if (_read_lock(path) or {}).get("token") == owner["token"]:
            with contextlib.suppress(Exception):
                tf.io.gfile.remove(path)


def _create_exclusive(path: str, text: str) -> bool:
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    if tf.io.gfile.exists(path):
        return False
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)
    return True


def _read_lock(path: str) -> dict | None:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            holder = json.loads(f.read(4096))
        return holder if isinstance(holder, dict) else {}
    except tf.errors.NotFoundError:
        return None
    except (ValueError, tf.errors.OpError):
        return {}      # half-written or damaged: treated as held, and the message says so


def _is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def run_dir(output: str, run_id: str) -> str:
    """The folder a published run lives in: ``<output>/<run_id>``."""
    return f"{output.rstrip('/')}/{run_id}"


def parquet_files(directory: str) -> list[str]:
    """The Parquet files of a table folder, sorted (none if the folder does not exist)."""
    if not tf.io.gfile.isdir(directory):
        return []
    return sorted(f"{directory}/{n}" for n in tf.io.gfile.listdir(directory) if n.endswith(".parquet"))


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def count_rows(directory: str) -> int:
    """Rows in a table folder, from the Parquet footers (no data read)."""
    total = 0
    for path in parquet_files(directory):
        with _open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def value_counts(directory: str, column: str) -> Counter:
    """How many rows of a table folder hold each value of a column."""
    counts: Counter = Counter()
    for path in parquet_files(directory):
        with _open(path) as f:
            # Not pq.read_table: its dataset scan leaves Arrow threads holding buffers of this
            # Python file, and one released while the interpreter exits aborts the process
            # (SIGABRT after a published run; apache/arrow#34314).
            table = pq.ParquetFile(f).read(columns=[column])
        for item in pc.value_counts(table.column(column)).to_pylist():
            counts[item["values"]] += item["counts"]
    return counts


def count_true(directory: str, column: str) -> int:
    """How many rows of a table folder hold True in a boolean column."""
    return value_counts(directory, column)[True]


def reasons_text(reasons: dict[str, int], shown: int = 3) -> str:
    """Dead-letter reasons, most frequent first: "2 empty_file, 1 non_finite_feature"."""
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    more = f" and {len(ranked) - shown} more reasons" if len(ranked) > shown else ""
    return ", ".join(f"{n} {reason}" for reason, n in ranked[:shown]) + more


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
    stats = read_stats(f"{staging}/{STATS_DIR}")
    records = sum(s["records"] for s in stats)
    lost = sum(s["failed_records"] for s in stats)
    scored = count_rows(f"{staging}/scores")
    dead = count_rows(f"{staging}/dead_letter")
    counts = {"files": len(stats), "records_read": records,
              "file_failures": sum(1 for s in stats if not s["fully_read"]),
              "uncounted_files": sum(1 for s in stats if not s["count_known"]),
              "read": records + lost, "scored": scored, "dead_lettered": dead,
              "read_is_lower_bound": any(not s["count_known"] for s in stats),
              "anomalies": count_true(f"{staging}/scores", "is_anomaly") if scored else 0,
              "dead_letter_reasons": dict(value_counts(f"{staging}/dead_letter", "reason")) if dead else {}}
    return counts, stats


def check_books(counts: dict, stats: list[dict], max_bad_fraction: float, n_files: int,
                allow_uncounted_files: bool = False) -> None:
    """The run accounts for every record, and the bad fraction is under its limit.

    A file that failed before its record count could be known (no Parquet footer, a
    TFRecord or CSV cut short) makes the bad fraction unknown: that is over any limit
    unless the caller allows it.
    """
    if counts["files"] != n_files:
        raise RunError(f"{n_files} input files but {counts['files']} were read")
    if counts["read"] != counts["scored"] + counts["dead_lettered"]:
        raise RunError(f"read {counts['read']} != scored {counts['scored']} + dead-lettered "
                       f"{counts['dead_lettered']}; records were lost")
    uncounted = [s["uri"] for s in stats if not s["count_known"]]
    if uncounted and not allow_uncounted_files:
        more = f" and {len(uncounted) - 1} more" if len(uncounted) > 1 else ""
        raise BadRecordsError(f"{uncounted[0]}{more} failed before their records could be counted, so "
                       "the bad fraction is unknown (--allow-uncounted-files publishes anyway, "
                       "counting such a file's lost records as one)")
    if counts["read"]:
        bad = counts["dead_lettered"] / counts["read"]
        counts["bad_fraction"] = bad
        if bad > max_bad_fraction:
            raise BadRecordsError(f"{counts['dead_lettered']} of {counts['read']} records dead-lettered "
                                  f"({bad:.1%}: {reasons_text(counts['dead_letter_reasons'])}) is above "
                                  f"--max-bad-fraction {max_bad_fraction:.1%}")


def publish(staging: str, final: str, manifest: dict) -> None:
    """Write the manifest, rename staging to the run folder, then write _SUCCESS.

    _SUCCESS comes last because a folder rename is not atomic on object stores (GCS
    copies then deletes): readers trust only _SUCCESS, so a crash at any point leaves
    nothing they will read, and the next run of this id replaces what is left.  An error
    (rather than a crash) in the middle puts an earlier run of the id back in place.
    """
    for scratch in (STATS_DIR, WORKERS_DIR):
        if tf.io.gfile.isdir(f"{staging}/{scratch}"):
            tf.io.gfile.rmtree(f"{staging}/{scratch}")
    with tf.io.gfile.GFile(f"{staging}/{MANIFEST}", "w") as f:
        json.dump(strict_json(manifest), f, indent=1, default=str, allow_nan=False)
    trash = None
    if tf.io.gfile.exists(final):
        trash = f"{final.rstrip('/')}.replaced-{uuid.uuid4().hex[:NONCE]}"
        tf.io.gfile.rename(final, trash)
    try:
        tf.io.gfile.rename(staging, final)
        try:
            with tf.io.gfile.GFile(f"{final}/{SUCCESS}", "w") as f:
                f.write("")
        except BaseException:
            with contextlib.suppress(Exception):
                tf.io.gfile.rename(final, staging)
            raise
    except BaseException:
        if trash:
            with contextlib.suppress(Exception):
                tf.io.gfile.rename(trash, final)
        raise
    if trash:
        with contextlib.suppress(Exception):   # the next run of this id removes it
            tf.io.gfile.rmtree(trash)


def is_published(directory: str) -> bool:
    """Whether a run folder is complete: only ``_SUCCESS`` says so."""
    return tf.io.gfile.exists(f"{directory.rstrip('/')}/{SUCCESS}")


def clean_stale(output: str, run_id: str) -> None:
    """Remove staging and replaced folders that an earlier crashed run of this id left.

    Only names this run id makes, to the letter: run ``night`` never touches the folders
    of run ``night-eu``.  Called with the run's lock held, so none of them is live.
    """
    if not tf.io.gfile.isdir(output):
        return
    rid = re.escape(run_id)
    own = re.compile(rf"^(\.staging-{rid}|{rid}\.replaced)-[0-9a-f]{{{NONCE}}}$")
    for name in tf.io.gfile.listdir(output):
        name = name.rstrip("/")
        if own.match(name):
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
