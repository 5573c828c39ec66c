"""The pipeline's steps as small DoFns: read files, decode, turn predictions into rows.

Each step sends what it cannot handle to a ``dead_letter`` output with a reason, so the
run can account for every record: read = scored + dead-lettered.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vigil.pipeline.decode import DecodeSpec, decode
from vigil.pipeline.readers import ReadSpec, printable, read_file
from vigil.pipeline.records import DeadLetter, FileStats, RawRecord, RecordBlock
from vigil.schemas.tables import SCORE_NAMES, top_features

DEAD_LETTER = "dead_letter"
STATS = "stats"
LOG = logging.getLogger("vigil.pipeline")


def path_token(path: str) -> str:
    """A path as hex of its bytes: a file name that is not UTF-8 survives every coder."""
    return path.encode("utf-8", "surrogateescape").hex()


def _from_token(token: str) -> str:
    return bytes.fromhex(token).decode("utf-8", "surrogateescape")


class ReadFiles(beam.DoFn):
    """(path token, format, root token) -> raw records; file problems -> dead letters; one
    stats per file.  Records name their file printably (``readers.printable``)."""

    def __init__(self, spec: ReadSpec, files: int = 0, log_every: float = 10.0,
                 started_dir: str | None = None):
        self.spec = spec
        self.files, self.log_every = files, log_every     # files in the whole run, for progress
        self.started_dir = started_dir    # where each worker leaves word that it started
        self.records = Metrics.counter("vigil", "records_read")
        self.failed_files = Metrics.counter("vigil", "files_not_fully_read")

    def setup(self):
        """Reset the progress counters and leave word that this worker started."""
        self._done, self._read, self._bad, self._last = 0, 0, 0, time.time()
        if self.started_dir:
            # The launcher waits for one such file to know the workers could start at all.
            FileSystems.create(f"{self.started_dir}/{socket.gethostname()}-{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}").close()

    def _progress(self, stats: FileStats) -> None:
        self._done, self._read = self._done + 1, self._read + stats.records + stats.failed_records
        self._bad += stats.failed_records
        now = time.time()
        if now - self._last >= self.log_every:
            self._last = now
            of = f" of {self.files}" if self.files else ""
            LOG.info("read %d%s files: %d records, %d of them lost to damaged files",
                     self._done, of, self._read, self._bad)

    def process(self, element):
        """Read one file: its records (in lists, or a table's in blocks), its dead letters,
        then its stats."""
        token, fmt, root_token = element
        uri, root = _from_token(token), _from_token(root_token)
        spec = ReadSpec(fmt, self.spec.id_column, self.spec.feature_columns,
                        self.spec.carry_columns, root, self.spec.max_record_bytes,
                        self.spec.batch_rows)
        stats = FileStats(printable(uri))
        for item in read_file(uri, spec, stats, blocks=True):
            if isinstance(item, DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
            else:
                yield item
        self.records.inc(stats.records)
        if not stats.fully_read:
            self.failed_files.inc()
        self._progress(stats)
        yield beam.pvalue.TaggedOutput(STATS, stats.to_dict())


class Decode(beam.DoFn):
    """Raw records -> one block of the decoded ones, and a dead letter for each of the
    rest; a block (a table's rows, decoded as they were read) passes as it is."""

    def __init__(self, spec: DecodeSpec):
        self.spec = spec

    def process(self, element: RawRecord | list[RawRecord] | RecordBlock):
        """Decode a raw record, or a file's list of them, into a block."""
        if isinstance(element, RecordBlock):
            yield element
            return
        decoded = []
        for record in element if isinstance(element, list) else [element]:
            out = decode(record, self.spec)
            if isinstance(out, DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, out)
            else:
                decoded.append(RecordBlock.of(out))
        if decoded:
            yield RecordBlock.concat(decoded)


def carried_column(values: list, field: pa.Field) -> pa.Array:
    """A carried label column as its field's unified type (``preflight.carried_fields``).

    Values of another kind than the field's (an int in a string column, from another
    file) are converted one by one: ``str(1)``, ``float(1)``, a list or a struct's dict
    as JSON.
    """
    try:
        return pa.array(values, field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if pa.types.is_string(field.type):
        values = [v if v is None or isinstance(v, str) else
                  json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v) for v in values]
    elif pa.types.is_floating(field.type):
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, field.type)


class ToTable(beam.DoFn):
    """A scored batch -> one Arrow table of scores rows; a row whose score is not finite
    -> a dead letter.

    Also logs progress (records and records/s) at most every ``log_every`` seconds.
    """

    def __init__(self, run_id: str, schema: pa.Schema, feature_names: tuple[str, ...] = (),
                 input_shape: tuple[int, ...] = (), expected: int | None = None,
                 log_every: float = 5.0):
        self.run_id = run_id
        self.schema = schema
        self.expected = expected          # records the inputs hold, when known: for an ETA
        self.feature_names = tuple(feature_names)     # tables: a top feature's column
        self.input_shape = tuple(input_shape)         # images: a top pixel's position
        self.log_every = log_every
        self.scored = Metrics.counter("vigil", "records_scored")
        self.anomalies = Metrics.counter("vigil", "anomalies")

    def setup(self):
        """Reset the progress counters."""
        self._count, self._start, self._last = 0, time.time(), time.time()

    def process(self, result):
        """Turn one scored batch into a table, dead-lettering rows with a score that is not finite."""
        block: RecordBlock = result.example
        inf = result.inference
        finite = np.isfinite(np.column_stack([inf[n] for n in (*SCORE_NAMES, "anomaly_score")])).all(axis=1)
        for r in np.flatnonzero(~finite):
            bad = [n for n in SCORE_NAMES if not np.isfinite(inf[n][r])] or ["anomaly_score"]
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                block.sources[r], "postprocess", "non_finite_score", f"{', '.join(bad)} is not finite",
                block.ids[r]))
        keep = np.flatnonzero(finite)
        if not len(keep):
            return
        table = self._table(block, {k: np.asarray(v)[keep] for k, v in inf.items()}, keep,
                            str(result.model_id))
        self.scored.inc(table.num_rows)
        self.anomalies.inc(int(np.count_nonzero(inf["is_anomaly"][keep])))
        self._progress(table.num_rows)
        yield table

    def _table(self, block: RecordBlock, inf: dict, keep: np.ndarray, version: str) -> pa.Table:
        n = len(keep)
        every = n == len(block)
        pick = (lambda values: values) if every else (lambda values: [values[r] for r in keep])
        columns = {"id": pa.array(pick(block.ids), pa.string()),
                   "source": pa.array(pick(block.sources), pa.string())}
        for name in SCORE_NAMES:
            columns[name] = pa.array(inf[name], pa.float64())
        for name in SCORE_NAMES:
            columns[f"{name}_pvalue"] = pa.array(inf[f"{name}_pvalue"], pa.float64())
        columns.update(
            anomaly_score=pa.array(inf["anomaly_score"], pa.float64()),
            anomaly_pvalue=pa.array(inf["anomaly_pvalue"], pa.float64()),
            threshold=pa.array(inf["threshold"], pa.float64()),
            is_anomaly=pa.array(np.asarray(inf["is_anomaly"], bool)),
            model_version=pa.array([version] * n, pa.string()),
            run_id=pa.array([self.run_id] * n, pa.string()),
            top_features=top_features(inf["top_index"], inf["top_contribution"], self.feature_names,
                                      self.input_shape))
        for field in self.schema:
            if field.name not in columns:
                values = block.labels.get(field.name)
                columns[field.name] = carried_column(pick(values) if values is not None else [None] * n,
                                                     field)
        return pa.Table.from_arrays([columns[f.name] for f in self.schema], schema=self.schema)

    def _progress(self, rows: int):
        self._count += rows
        now = time.time()
        if now - self._last >= self.log_every:
            self._last = now
            rate = self._count / max(now - self._start, 1e-9)
            if self.expected:
                # Each worker sees its share only; the ETA is for the whole input at this
                # worker's rate, so it errs long on several workers.
                left = max(self.expected - self._count, 0) / rate
                LOG.info("scored %d of %d records (%.0f records/s, about %.0f s left)",
                         self._count, self.expected, rate, left)
            else:
                LOG.info("scored %d records (%.0f records/s)", self._count, rate)


def failed_batch_to_dead_letters(element) -> list[DeadLetter]:
    """RunInference's (failed batch of blocks, exception) -> one dead letter per record in it."""
    batch, exc = element
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return [DeadLetter(source, "inference", "inference_failed", message, rid)
            for block in batch for rid, source in zip(block.ids, block.sources)]
