"""The pipeline's steps as small DoFns: read files, decode, turn predictions into rows.

Each step sends what it cannot handle to a ``dead_letter`` output with a reason, so the
run can account for every record: read = scored + dead-lettered.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vigil.pipeline.decode import DecodeSpec, decode
from vigil.pipeline.readers import ReadSpec, printable, read_file
from vigil.pipeline.records import DeadLetter, FileStats, RawRecord, ScoringInput
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
        """Read one file: its records, its dead letters, then its stats."""
        token, fmt, root_token = element
        uri, root = _from_token(token), _from_token(root_token)
        spec = ReadSpec(fmt, self.spec.id_column, self.spec.feature_columns,
                        self.spec.carry_columns, root, self.spec.max_record_bytes,
                        self.spec.batch_rows)
        stats = FileStats(printable(uri))
        for item in read_file(uri, spec, stats):
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
    """Raw record -> (id, ScoringInput) keyed for RunInference, or a dead letter."""

    def __init__(self, spec: DecodeSpec):
        self.spec = spec

    def process(self, record: RawRecord):
        """Decode one raw record into a keyed model input, or a dead letter."""
        out = decode(record, self.spec)
        if isinstance(out, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, out)
        else:
            yield out.id, out


def carried_value(value, field: pa.Field):
    """A carried value as its column's unified type (None stays None)."""
    if value is None:
        return None
    if pa.types.is_string(field.type):
        return value if isinstance(value, str) else str(value)
    if pa.types.is_floating(field.type):
        return float(value)
    return value


class ToRow(beam.DoFn):
    """(id, PredictionResult) -> a scores-table row; a non-finite score -> dead letter.

    Also logs progress (records and records/s) at most every ``log_every`` seconds.
    """

    def __init__(self, run_id: str, label_fields: list[pa.Field], feature_names: tuple[str, ...] = (),
                 input_shape: tuple[int, ...] = (), expected: int | None = None,
                 log_every: float = 5.0):
        self.run_id = run_id
        self.expected = expected          # records the inputs hold, when known: for an ETA
        self.label_fields = list(label_fields)
        self.feature_names = tuple(feature_names)     # tables: a top feature's column
        self.input_shape = tuple(input_shape)         # images: a top pixel's position
        self.log_every = log_every
        self.scored = Metrics.counter("vigil", "records_scored")
        self.anomalies = Metrics.counter("vigil", "anomalies")

    def setup(self):
        """Reset the progress counters."""
        self._count, self._start, self._last = 0, time.time(), time.time()

    def process(self, element):
        """Turn one prediction into a scores-table row, or a dead letter when a score is not finite."""
        _, result = element
        example: ScoringInput = result.example
        inf = result.inference
        values = [inf[n] for n in SCORE_NAMES] + [inf["anomaly_score"]]
        if not all(math.isfinite(float(v)) for v in values):
            bad = [n for n in SCORE_NAMES if not math.isfinite(float(inf[n]))] or ["anomaly_score"]
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter(
                example.source, "postprocess", "non_finite_score",
                f"{', '.join(bad)} is not finite", example.id))
            return
        row = {"id": example.id, "source": example.source}
        for n in SCORE_NAMES:
            row[n] = float(inf[n])
            row[f"{n}_pvalue"] = float(inf[f"{n}_pvalue"])
        row.update(anomaly_score=float(inf["anomaly_score"]),
                   anomaly_pvalue=float(inf["anomaly_pvalue"]),
                   threshold=float(inf["threshold"]), is_anomaly=bool(inf["is_anomaly"]),
                   model_version=str(result.model_id), run_id=self.run_id,
                   top_features=top_features(inf["top_index"], inf["top_contribution"],
                                             self.feature_names, self.input_shape))
        for f in self.label_fields:
            row[f.name] = carried_value(example.labels.get(f.name), f)
        self.scored.inc()
        if row["is_anomaly"]:
            self.anomalies.inc()
        self._progress()
        yield row

    def _progress(self):
        self._count += 1
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
    """RunInference's (failed batch, exception) -> one dead letter per record in it."""
    batch, exc = element
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    out = []
    for item in batch:
        example = item[1] if isinstance(item, tuple) else item
        out.append(DeadLetter(example.source, "inference", "inference_failed", message, example.id))
    return out
