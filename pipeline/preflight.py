"""Checks made at launch, before anything is read for scoring or written.

A glob that matches nothing, inputs none of whose names say a format, a table missing a
column the model needs: each stops the run here with one line naming the glob, file or
column.  Files whose header cannot even be read, or whose name says no format beside files
that do, are *not* stopped here: they become dead letters when read, and the rest of the
input is scored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from vigil.pipeline.readers import UNKNOWN_FORMAT, format_of, tfrecord_kind
from vigil.schemas.tables import label_field


class InputError(Exception):
    """The inputs cannot be scored as given; the message says what to fix."""


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    format: str
    root: str


def glob_root(pattern: str) -> str:
    """The part of a glob before its first wildcard: image ids are paths relative to it."""
    wild = re.search(r"[*?\[]", pattern)
    if not wild:
        return os.path.dirname(pattern)
    head = pattern[:wild.start()]
    return head if head.endswith("/") else os.path.dirname(head)


def match_inputs(patterns: list[str] | tuple[str, ...], max_files: int) -> list[tuple[str, int, str]]:
    """(uri, size, root) of every file matched; raises InputError for an empty glob."""
    found: dict[str, tuple[str, int, str]] = {}
    for pattern in patterns:
        if not pattern.strip():
            raise InputError("an --input pattern is empty")
        try:
            metadata = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:  # noqa: BLE001 - Beam raises BeamIOError for bad paths
            raise InputError(f"--input {pattern}: cannot be listed ({exc})") from None
        files = [m for m in metadata if not m.path.endswith("/")]
        if not files:
            raise InputError(f"--input {pattern}: matches no files; check the path and quote "
                             "the glob so the shell does not expand it")
        for m in files:
            found.setdefault(m.path, (m.path, m.size_in_bytes, glob_root(pattern)))
        if len(found) > max_files:
            raise InputError(f"--input matches more than {max_files} files; raise --max-files "
                             "or narrow the glob")
    return sorted(found.values())


def resolve_formats(files, override: str, kind: str | None) -> list[InputFile]:
    """Each file's format: the override, or from its name (and first record for TFRecord).

    A file whose name says no format, matched beside files that do (a README in an image
    folder), is marked ``UNKNOWN_FORMAT`` and becomes a dead letter when read; when no
    file's name says a format, the run cannot start.
    """
    out = []
    for uri, size, root in files:
        fmt = override if override != "auto" else format_of(uri)
        if fmt == "tfrecord":
            fmt = tfrecord_kind(uri) or ("tfrecord-image" if kind == "image" else "tfrecord-features")
        out.append(InputFile(uri, size, fmt or UNKNOWN_FORMAT, root))
    if out and all(f.format == UNKNOWN_FORMAT for f in out):
        raise InputError(f"{out[0].uri}: cannot tell the format from the name; pass --format "
                         "(tfrecord-image, tfrecord-features, image, parquet, csv)")
    if kind is not None:
        expected = {"image": ("tfrecord-image", "image"),
                    "features": ("tfrecord-features", "parquet", "csv")}[kind]
        for f in out:
            if f.format not in (*expected, UNKNOWN_FORMAT):
                raise InputError(f"{f.uri}: format {f.format} does not fit a model of "
                                 f"{kind} input; expected {' or '.join(expected)}")
    return out


def table_schema(f: InputFile) -> pa.Schema | None:
    """The Arrow schema of a Parquet/CSV file, or None if its header cannot be read."""
    try:
        with FileSystems.open(f.uri, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            if f.format == "parquet":
                return pq.ParquetFile(fh).schema_arrow
            return pacsv.open_csv(fh).schema
    except Exception:  # noqa: BLE001 - an unreadable file is a dead letter, not a stop
        return None


def check_columns(files: list[InputFile], id_column: str, required: list[str]) -> None:
    """Every readable table has the id column and the model's feature columns."""
    for f in files:
        if f.format not in ("parquet", "csv") or f.size == 0:
            continue
        schema = table_schema(f)
        if schema is None:
            continue
        for column in [id_column, *required]:
            if column not in schema.names:
                raise InputError(f"{f.uri}: missing column '{column}' (the model needs "
                                 f"'{id_column}' and its {len(required)} feature columns)")


def carried_fields(files: list[InputFile], carry_columns: tuple[str, ...]) -> list[pa.Field]:
    """Arrow fields of the label columns that are present, typed from the first table."""
    if not carry_columns:
        return []
    if any(f.format.startswith("tfrecord") for f in files):
        return [pa.field("label", pa.int64())] if "label" in carry_columns else []
    for f in files:
        if f.format in ("parquet", "csv") and f.size:
            schema = table_schema(f)
            if schema is not None:
                return [_plain_field(schema.field(c)) for c in carry_columns if c in schema.names]
    return []


def _plain_field(field: pa.Field) -> pa.Field:
    t = field.type
    if pa.types.is_integer(t):
        return pa.field(field.name, pa.int64())
    if pa.types.is_floating(t):
        return pa.field(field.name, pa.float64())
    if pa.types.is_boolean(t):
        return pa.field(field.name, pa.bool_())
    return label_field(field.name, "")
