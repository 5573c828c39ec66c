"""What a file holds, from its name, and how a streamed format is opened.

The format comes from the file name (``--format`` overrides it): content is not guessed at,
so a README beside the data is named as such instead of being parsed as a table.
"""
from __future__ import annotations

import pyarrow as pa

FORMATS = ("tfrecord-image", "tfrecord-features", "image", "parquet", "csv")
# A file matched beside readable ones whose name says no format (a README in an image
# folder): it is not guessed at, and becomes an ``unknown_format`` dead letter.
UNKNOWN_FORMAT = "unknown"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfrec")
# Formats read as a stream, so a gzipped file (``.csv.gz``) is decompressed as it is read.
# Parquet needs random access and compresses its own columns; images are compressed already.
GZIP_FORMATS = ("csv", "tfrecord")
EXTENSIONS_HINT = ".png .jpg .jpeg .tfrecord .parquet .csv, or .csv.gz .tfrecord.gz"


def format_of(uri: str) -> str | None:
    """Format from the file name: parquet, csv, image, or 'tfrecord' (kind still open)."""
    name = uri.lower()
    if name.endswith(".gz"):
        inner = format_of(name.removesuffix(".gz"))
        return inner if inner in GZIP_FORMATS else None
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(IMAGE_EXTENSIONS):
        return "image"
    if name.endswith(TFRECORD_EXTENSIONS):
        return "tfrecord"
    return None


def csv_stream(f, uri: str):
    """A CSV file opened through Beam (uncompressed), as the stream Arrow reads: ``.gz``
    files are decompressed by Arrow.  (Beam's own decompressing file reads as closed to
    Arrow: its ``closed`` is a method.)"""
    return pa.CompressedInputStream(f, "gzip") if uri.lower().endswith(".gz") else f
