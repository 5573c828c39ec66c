"""Read one input file into raw records, streaming, without Beam.

Used by the Beam read step (one call per file, inside a DoFn, so one bad file becomes a
dead letter) and by the training job.  A reader yields ``RawRecord``s and, for problems
it can pin on a record or a file, ``DeadLetter``s; it fills in ``FileStats`` as it goes.

Corruption policy: records read before a corruption point are kept and scored; the file
gets one ``truncated_file`` dead letter naming it, and the manifest marks it as not fully
read.  A file that cannot be opened at all gets one ``unreadable_file`` dead letter.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from vigil.pipeline.columns import feature_matrix, table_columns
from vigil.pipeline.decode import DecodeSpec, decode_rows
from vigil.pipeline.formats import EXTENSIONS_HINT, FORMATS, UNKNOWN_FORMAT, csv_stream
from vigil.pipeline.records import DeadLetter, FileStats, RawRecord, RecordBlock

# Serialized records per read of a TFRecord file: enough to share out the cost of a read,
# few enough that a chunk of large images stays small beside a batch of decoded ones.
TFRECORD_CHUNK = 32


@dataclass(frozen=True)
class ReadSpec:
    """What to read from each file."""
    format: str
    id_column: str = "id"
    feature_columns: tuple[str, ...] = ()     # tabular: the columns the model expects
    carry_columns: tuple[str, ...] = ()       # tabular: label columns carried through
    root: str = ""                            # image files: ids are paths relative to it
    max_record_bytes: int = 64 << 20
    batch_rows: int = 4096

    def __post_init__(self):
        if self.format not in (*FORMATS, UNKNOWN_FORMAT):
            raise ValueError(f"format={self.format!r}; expected one of {FORMATS}")


def tfrecord_kind(uri: str) -> str | None:
    """'tfrecord-image' or 'tfrecord-features' from the first example, None if unreadable."""
    import tensorflow as tf
    try:
        for raw in _tfrecord_dataset(uri).take(1).as_numpy_iterator():
            keys = set(tf.train.Example.FromString(raw).features.feature)
            if "image/encoded" in keys:
                return "tfrecord-image"
            if "features" in keys:
                return "tfrecord-features"
    except Exception:  # noqa: BLE001 - any failure here is reported when the file is read
        return None
    return None


def printable(path: str) -> str:
    """A path as valid UTF-8 text: bytes of a file name that are not UTF-8 as ``\\xNN``.

    Such names reach Python as lone surrogates, which Parquet, JSON lines and Beam's coders
    refuse; the real name is still what is opened.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_file(uri: str, spec: ReadSpec, stats: FileStats, blocks: bool = False
              ) -> Iterator[RawRecord | list[RawRecord] | RecordBlock | DeadLetter]:
    """Yield the records of one file; never raises for bad data.

    ``uri`` is opened; records and dead letters name ``stats.uri`` as their source (the
    same path, printable).  With ``blocks`` a table's rows (Parquet, CSV) come as
    ``RecordBlock``s of up to ``spec.batch_rows`` rows, already checked by ``decode``'s
    rules (``decode_rows``, a batch at a time), and other records (a TFRecord file's
    images) as lists of up to ``spec.batch_rows`` ``RawRecord``s, so that the pipeline
    moves one element per list; without, one ``RawRecord`` each, as they are in the file
    (a report describes missing values; ``decode`` checks each record).
    """
    raws: list[RawRecord] = []
    for item in _read_items(uri, spec, stats):
        if blocks and isinstance(item, RawRecord):
            raws.append(item)
            if len(raws) == spec.batch_rows:
                yield raws
                raws = []
            continue
        if not isinstance(item, pa.RecordBatch):
            yield item
            continue
        # Outside the file's error handling: a failure here is not the file's fault.
        slices = (item.slice(at, spec.batch_rows) for at in range(0, item.num_rows, spec.batch_rows))
        for row in (r for part in slices for r in _table_items(part, stats.uri, spec, blocks)):
            stats.records += len(row) if isinstance(row, RecordBlock) else 1
            yield row
    if raws:
        yield raws


def _read_items(uri: str, spec: ReadSpec,
                stats: FileStats) -> Iterator[RawRecord | pa.RecordBatch | DeadLetter]:
    """The file's records, or its tables' Arrow batches (counted by the caller); a file
    problem becomes dead letters."""
    readers = {"tfrecord-image": _read_tfrecord, "tfrecord-features": _read_tfrecord,
               "image": _read_image_file, "parquet": _read_parquet, "csv": _read_csv}
    if not _inside_root(uri, spec.root):
        yield from _file_failure(stats, "outside_root",
                                 f"resolves outside its input folder {spec.root} (a symlink or '..')")
        return
    try:
        size = FileSystems.match([uri])[0].metadata_list[0].size_in_bytes
        if not (spec.format == "image" and size > spec.max_record_bytes):   # never read
            stats.sha256 = file_sha256(uri)
        if size == 0:
            yield from _file_failure(stats, "empty_file", "the file has no bytes")
            return
        if spec.format == UNKNOWN_FORMAT:
            yield from _file_failure(stats, "unknown_format", "the file name says no format "
                                     f"({EXTENSIONS_HINT}); not read")
            return
        stats.held = _records_held(uri, spec.format)
        for item in readers[spec.format](uri, stats.uri, spec):
            if not isinstance(item, pa.RecordBatch):
                stats.records += 1      # a record, or a record-level dead letter: both were read
            yield item
    except _Truncated as exc:
        yield from _file_failure(stats, "truncated_file", f"read {stats.records} records, then: {exc}",
                                 lost=True)
    except Exception as exc:  # noqa: BLE001 - any other failure means the file is unusable
        reason = "truncated_file" if stats.records else "unreadable_file"
        yield from _file_failure(stats, reason, f"{type(exc).__name__}: {_first_line(exc)}", lost=True)


def records_held(files, max_files: int = 1000) -> int | None:
    """Records a set of input files (``InputFile``s) holds, if every format says before reading.

    It costs a footer read per Parquet file at launch, so past ``max_files`` it is not
    counted (progress then shows no time left).
    """
    if len(files) > max_files:
        return None
    total = 0
    for f in files:
        held = _records_held(f.uri, f.format) if f.size else 0
        if held is None:
            return None
        total += held
    return total


def _records_held(uri: str, fmt: str) -> int | None:
    """How many records a file holds, where its format says so before it is read."""
    if fmt == "image":
        return 1
    if fmt != "parquet":
        return None      # TFRecord and CSV only know their records by reading them all
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return pq.ParquetFile(f).metadata.num_rows
    except Exception:  # noqa: BLE001 - no footer: the count stays unknown
        return None


def file_sha256(uri: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file, streamed, so the manifest pins exactly which bytes were scored."""
    digest = hashlib.sha256()
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _inside_root(uri: str, root: str) -> bool:
    """A local file matched under ``root`` must really live there: no symlink escapes."""
    if not root or "://" in uri:
        return True
    real_root = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(uri), real_root]) == real_root


class _Truncated(Exception):
    """The file is corrupt past some point; what was read before it is good."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _file_failure(stats: FileStats, reason: str, message: str,
                  lost: bool = False) -> Iterator[DeadLetter]:
    """The file's dead letters: one per record it still held (``lost``) when that is known.

    A file vigil declines to read (empty, no format, outside its root) is one dead letter.
    """
    stats.fully_read = False
    stats.failure = reason
    remaining = stats.held - stats.records if lost and stats.held is not None else None
    if lost and remaining is None:
        stats.count_known = False
    for k in range(max(remaining or 0, 1)):
        where = f"record {stats.records + k + 1} of {stats.held}: " if remaining else ""
        stats.failed_records += 1
        yield DeadLetter(stats.uri, "read", reason, where + message)


def _decode_id(raw, source: str, nbytes: int = 0, value=None, labels=None) -> RawRecord:
    """Build a record, keeping the raw bytes of an id that is not UTF-8."""
    if isinstance(raw, bytes):
        try:
            return RawRecord(raw.decode("utf-8") if raw else None, source, value, labels or {},
                             None, nbytes)
        except UnicodeDecodeError:
            return RawRecord(None, source, value, labels or {}, raw, nbytes)
    text = None if raw is None or (isinstance(raw, str) and not raw) else str(raw)
    return RawRecord(text, source, value, labels or {}, None, nbytes)


# ----------------------------------------------------------------------------- TFRecord
def _tfrecord_dataset(uri: str):
    import tensorflow as tf
    dataset = tf.data.TFRecordDataset(uri, compression_type="GZIP" if uri.endswith(".gz") else "")
    # Autotuning starts a model thread per iterator, and destroying the iterator waits for
    # it: seconds per file inside a busy scoring worker (a third of a 20k-record run).
    # A sequential read of one file has nothing to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _tfrecord_raw(uri: str) -> Iterator[bytes]:
    """A TFRecord file's serialized records; ``_Truncated`` after the last good one.

    Read ``TFRECORD_CHUNK`` at a time: each step of a tf.data iterator is an eager call
    that costs more than parsing the record it returns.  An error loses its chunk, so the
    chunk is read again one record at a time up to the exact record that fails.
    """
    import tensorflow as tf
    done = 0
    try:
        for chunk in _tfrecord_dataset(uri).batch(TFRECORD_CHUNK).as_numpy_iterator():
            yield from chunk
            done += len(chunk)
        return
    except tf.errors.OpError:
        pass
    try:
        yield from _tfrecord_dataset(uri).skip(done).as_numpy_iterator()
    except tf.errors.DataLossError as exc:
        raise _Truncated(_first_line(exc)) from exc


def _read_tfrecord(uri: str, source: str, spec: ReadSpec) -> Iterator[RawRecord]:
    import tensorflow as tf
    for raw in _tfrecord_raw(uri):
        try:
            feats = tf.train.Example.FromString(raw).features.feature
        except Exception as exc:  # noqa: BLE001 - a bad proto is corruption of this file
            raise _Truncated(f"record is not a tf.train.Example ({type(exc).__name__})") from exc
        ids = feats["id"].bytes_list.value if "id" in feats else []
        labels = {"label": int(feats["label"].int64_list.value[0])} \
            if "label" in feats and feats["label"].int64_list.value else {}
        if spec.format == "tfrecord-image":
            value = bytes(feats["image/encoded"].bytes_list.value[0]) \
                if "image/encoded" in feats and feats["image/encoded"].bytes_list.value else None
        else:
            value = list(feats["features"].float_list.value) if "features" in feats else None
        yield _decode_id(ids[0] if ids else None, source, len(raw), value, labels)


# ----------------------------------------------------------------------------- image files
def _read_image_file(uri: str, source: str, spec: ReadSpec) -> Iterator[RawRecord]:
    rel = printable(os.path.relpath(uri, spec.root) if spec.root else os.path.basename(uri))
    size = FileSystems.match([uri])[0].metadata_list[0].size_in_bytes
    if size > spec.max_record_bytes:
        yield RawRecord(rel, source, None, nbytes=size)   # flagged by decode, never read
        return
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    yield RawRecord(rel, source, data, nbytes=len(data))


# ----------------------------------------------------------------------------- tables
def _ids(column: pa.ChunkedArray | pa.Array) -> list:
    """Each row's id as ``decode_rows`` takes it: str, None (missing or empty), or bytes (not UTF-8)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [v or None for v in column.to_pylist()]
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [_utf8_or_bytes(v) for v in column.to_pylist()]
    return [None if v is None else str(v) for v in column.to_pylist()]


def _utf8_or_bytes(raw: bytes | None) -> str | bytes | None:
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _table_items(batch: pa.RecordBatch, source: str, spec: ReadSpec,
                 blocks: bool) -> Iterator[RecordBlock | RawRecord | DeadLetter]:
    """One Arrow batch of a table -> its good rows as one block and a dead letter per bad
    row (``blocks``), or a record per row; a value that is not a number is a dead letter."""
    names = batch.schema.names
    ids = _ids(batch.column(names.index(spec.id_column)))
    x, bad, wrong_shape = feature_matrix(batch, spec.feature_columns)
    labels = {c: batch.column(names.index(c)).to_pylist() for c in spec.carry_columns if c in names}
    unusable = bad.any(axis=1)
    unusable[list(wrong_shape)] = True
    for r in np.flatnonzero(unusable):
        rid = ids[r]
        reason, message = ("wrong_shape", wrong_shape[r]) if r in wrong_shape else (
            "non_numeric_feature",
            f"column '{spec.feature_columns[int(np.argmax(bad[r]))]}' holds a value that is not a number")
        yield DeadLetter(source, "decode", reason, message,
                         rid if isinstance(rid, str) else None, rid.hex() if isinstance(rid, bytes) else None)
    if unusable.any():
        keep = np.flatnonzero(~unusable)
        ids, x = [ids[r] for r in keep], x[keep]
        labels = {c: [v[r] for r in keep] for c, v in labels.items()}
    if not blocks:
        for r, rid in enumerate(ids):
            yield RawRecord(rid if isinstance(rid, str) else None, source, x[r],
                            {c: v[r] for c, v in labels.items()},
                            rid if isinstance(rid, bytes) else None, x.shape[1] * x.itemsize)
        return
    block, dead = decode_rows(ids, x, source, labels,
                              DecodeSpec("features", (x.shape[1],), max_record_bytes=spec.max_record_bytes,
                                         feature_names=spec.feature_columns))
    yield from dead
    if block is not None:
        yield block


def _read_parquet(uri: str, source: str, spec: ReadSpec) -> Iterator[pa.RecordBatch]:
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        columns = [spec.id_column, *table_columns(spec.feature_columns, names),
                   *[c for c in spec.carry_columns if c in names]]
        try:
            yield from parquet.iter_batches(batch_size=spec.batch_rows, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise _Truncated(_first_line(exc)) from exc


def _read_csv(uri: str, source: str, spec: ReadSpec) -> Iterator[pa.RecordBatch]:
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        reader = pacsv.open_csv(csv_stream(f, uri), read_options=pacsv.ReadOptions(block_size=1 << 22),
                                convert_options=pacsv.ConvertOptions(
                                    column_types={spec.id_column: pa.string()}))
        try:
            yield from reader
        except pa.ArrowException as exc:
            raise _Truncated(_first_line(exc)) from exc
