"""Checks made at launch, before anything is read for scoring or written.

A glob that matches nothing, inputs none of whose names say a format, a table missing a
column the model needs: each stops the run here with one line naming the glob, file or
column.  Files whose header cannot even be read, or whose name says no format beside files
that do, are *not* stopped here: they become dead letters when read, and the rest of the
input is scored.
"""
from __future__ import annotations

import functools
import glob
import itertools
import os
import re
import stat
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from vigil.pipeline.columns import Vector, vector_type
from vigil.pipeline.formats import UNKNOWN_FORMAT, csv_stream, format_of
from vigil.pipeline.readers import printable, tfrecord_kind
from vigil.schemas.features import column_name, source
from vigil.schemas.tables import scores_schema


class InputError(Exception):
    """The inputs cannot be scored as given; the message says what to fix."""


@dataclass(frozen=True)
class InputFile:
    """One matched input file: its URI, size, format and the glob root its record ids are relative to."""
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


def _not_a_file(path: str) -> str | None:
    """What a local path that is not a regular file is (opening a pipe would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing"
    except OSError as exc:
        return f"not inspectable ({exc.strerror})"
    kinds = ((stat.S_ISREG, None), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


# Spark, Hadoop, Hive and Arrow datasets keep metadata beside their data (_SUCCESS,
# _metadata, .crc checksums, _temporary/ of a job still writing), and their readers skip
# names that start with these.  So does a wildcard here; a pattern that spells the prefix
# itself ('_extra/*.parquet', '.hidden.csv') reads them.
HIDDEN_PREFIXES = (".", "_")


def _hidden(path: str, pattern: str) -> str | None:
    """Why a file a wildcard matched is metadata, not data (None if it is data)."""
    root = glob_root(pattern)
    asked = [c for c in pattern[len(root):].split("/") if c]
    if any(c.startswith(HIDDEN_PREFIXES) for c in asked) or not path.startswith(root):
        return None
    parts = [c for c in path[len(root):].split("/") if c]
    hidden = next((c for c in parts if c.startswith(HIDDEN_PREFIXES)), None)
    if hidden is None:
        return None
    return (f"a metadata file (its name starts with '{hidden[0]}')" if hidden == parts[-1] else
            f"in a metadata folder ({hidden})")


@dataclass(frozen=True)
class Matched:
    """What the ``--input`` globs matched: the files to read, and what is listed as not read."""
    files: list[tuple[str, int, str]]     # (uri, size, glob root), sorted by uri
    skipped: list[dict]                   # {"uri", "skipped": why}, sorted by uri


def match_inputs(patterns: list[str] | tuple[str, ...], max_files: int) -> Matched:
    """Every regular file the globs match, listed once; InputError for a glob that matches none.

    Not read, each listed with why: metadata files that data tools leave beside data
    (``_hidden``), and local paths that are not regular files (never opened: a pipe would
    block a reader).  Beam's match leaves out directories and dangling links and keeps
    pipes and sockets; a local glob lists them all.
    """
    found: dict[str, tuple[str, int, str]] = {}
    skipped: dict[str, dict] = {}
    for pattern in patterns:
        if not pattern.strip():
            raise InputError("an --input pattern is empty")
        if "://" not in pattern and os.path.isdir(pattern):
            raise InputError(f"--input {pattern} is a folder; give a glob of its files, e.g. "
                             f"'{pattern.rstrip('/')}/*.parquet' or '{pattern.rstrip('/')}/*.png'")
        files, not_read = [], {}
        for m in _matched(pattern):
            why = _hidden(m.path, pattern) or ("://" not in m.path and _not_a_file(m.path))
            if why:
                not_read[m.path] = {"uri": printable(m.path), "skipped": why}
            elif not m.path.endswith("/"):
                files.append(m)
        recursive = "**" in pattern         # then folders are gone through, not skipped
        for path in [] if "://" in pattern else glob.glob(pattern, recursive=recursive):
            why = _not_a_file(path)
            if why and not (recursive and os.path.isdir(path)):
                not_read.setdefault(path, {"uri": printable(path), "skipped": why})
        if not files:
            first = not_read[min(not_read)] if not_read else None
            what = f" to read (only {len(not_read)} that are not read, e.g. {first['uri']}: " \
                   f"{first['skipped']})" if first else ""
            raise InputError(f"--input {pattern}: matches no files{what}; check the path and quote "
                             "the glob so the shell does not expand it")
        for m in files:
            found.setdefault(m.path, (m.path, m.size_in_bytes, glob_root(pattern)))
        for path, item in not_read.items():
            skipped.setdefault(path, item)
        if len(found) > max_files:
            raise InputError(f"--input matches more than {max_files} files; raise --max-files "
                             "or narrow the glob")
    return Matched(sorted(found.values()), [skipped[p] for p in sorted(skipped)])


def _matched(pattern: str) -> list:
    """Beam's match of one glob (file metadata); InputError if it cannot be listed.

    ``/**/`` also matches no folder at all, as in Python's and the shell's globs: Beam's
    needs at least one, so ``data/**/*.parquet`` would leave out the files in ``data/``.
    """
    parts = pattern.split("/**/")
    variants = {parts[0] + "".join(sep + part for sep, part in zip(seps, parts[1:]))
                for seps in itertools.product(("/**/", "/"), repeat=len(parts) - 1)}
    try:
        found = {m.path: m for r in FileSystems.match(sorted(variants)) for m in r.metadata_list}
    except Exception as exc:  # noqa: BLE001 - Beam raises BeamIOError for bad paths
        raise InputError(f"--input {pattern}: cannot be listed ({exc})") from exc
    return [found[p] for p in sorted(found)]


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
        if out[0].uri.lower().endswith(".gz"):
            raise InputError(f"{out[0].uri}: only CSV and TFRecord files are read gzipped "
                             "(.csv.gz, .tfrecord.gz); decompress it first (Parquet compresses its "
                             "own columns)")
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


@functools.lru_cache(maxsize=4096)
def table_schema(f: InputFile) -> pa.Schema | None:
    """The Arrow schema of a Parquet/CSV file, or None if its header cannot be read."""
    try:
        with FileSystems.open(f.uri, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            if f.format == "parquet":
                return pq.ParquetFile(fh).schema_arrow
            return pacsv.open_csv(csv_stream(fh, f.uri)).schema
    except Exception:  # noqa: BLE001 - an unreadable file is a dead letter, not a stop
        return None


def check_folder(path: str, option: str) -> None:
    """A local folder vigil writes into (``--output``, ``--registry``) must be a folder or be
    creatable as one: a file in its place, or in place of a parent, would otherwise fail
    the command when it writes, after all the scoring or training."""
    if "://" in path:
        return
    here = os.path.abspath(path)
    while not os.path.lexists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        where = "" if here == os.path.abspath(path) else f" ({here} is a file)"
        raise InputError(f"{option} {path}: not a folder{where}")


def columns_hint(missing: str, names: list[str], shown: int = 8) -> str:
    """The columns a file has, the closest to ``missing`` first: what a typo needs to see."""
    import difflib
    close = difflib.get_close_matches(missing, names, n=3, cutoff=0.5)
    ordered = close + [n for n in names if n not in close]
    more = f" and {len(ordered) - shown} more" if len(ordered) > shown else ""
    separator = next((c for c in ";\t|" if len(names) == 1 and c in names[0]), None)
    if separator:       # a whole header read as one column name
        return (f"the file has one column, {names[0][:60]!r}...: its values are separated by "
                f"{separator!r}, and vigil reads comma-separated CSV")
    return f"the file has {', '.join(ordered[:shown])}{more}"


def check_columns(files: list[InputFile], id_column: str, required: list[str],
                  label_column: str | None = None) -> None:
    """Every readable table has the id column, the model's feature columns (a vector
    element ``emb[3]`` in a column of number lists ``emb``) and the label."""
    for f in files:
        if f.format not in ("parquet", "csv") or f.size == 0:
            continue
        schema = table_schema(f)
        if schema is None:
            continue
        needs = f"the model needs '{id_column}' and its {len(required)} feature columns"
        if id_column not in schema.names:
            raise InputError(f"{f.uri}: missing column '{id_column}' ({needs}); "
                             f"{columns_hint(id_column, schema.names)}")
        _check_features(f.uri, schema, required, needs)
        if label_column and label_column not in schema.names:
            raise InputError(f"{f.uri}: no label column '{label_column}' (--label-column); "
                             f"{columns_hint(label_column, schema.names)}")


def _check_features(uri: str, schema: pa.Schema, required: list[str], needs: str) -> None:
    """Each of the model's features has its column in ``schema``: a number column, or a
    column of number lists for its elements (of the model's length, when the file fixes it)."""
    names, vectors = set(schema.names), {}
    for name in required:
        found = source(name, names)
        if found is None:
            column = column_name(name)
            among = "" if column == name else f", {name} among them"
            raise InputError(f"{uri}: missing column '{column}' ({needs}{among}); "
                             f"{columns_hint(column, schema.names)}")
        column, index = found
        kind = schema.field(column).type
        if index is None and pa.types.is_nested(kind):
            raise InputError(f"{uri}: column '{column}' holds {kind} values; the model reads "
                             "it as one number per row")
        if index is not None:
            vectors.setdefault(column, []).append(index)
    for column, indices in vectors.items():
        kind = schema.field(column).type
        if not vector_type(kind):
            raise InputError(f"{uri}: column '{column}' holds {kind} values; the model reads its "
                             f"features ({column}[{indices[0]}], ...) as elements of a column of "
                             "number lists")
        vector = Vector(column, tuple(indices))
        if pa.types.is_fixed_size_list(kind) and not vector.fits(np.array([kind.list_size]))[0]:
            raise InputError(f"{uri}: column '{column}' holds vectors of {kind.list_size} numbers; "
                             f"the model reads {vector.expected()}")


def vector_length(f: InputFile, column: str) -> int | None:
    """How many numbers a list column holds per row: its fixed size, else the length of
    the first row in ``f`` whose list holds any; None if none does."""
    with FileSystems.open(f.uri, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        parquet = pq.ParquetFile(fh)
        kind = parquet.schema_arrow.field(column).type
        if pa.types.is_fixed_size_list(kind):
            return kind.list_size
        for batch in parquet.iter_batches(batch_size=1024, columns=[column]):
            lengths = pc.list_value_length(batch.column(0)).drop_null()
            lengths = lengths.filter(pc.greater(lengths, 0))
            if len(lengths):
                return lengths[0].as_py()
    return None


def carried_fields(files: list[InputFile], carry_columns: tuple[str, ...]) -> list[pa.Field]:
    """Arrow fields of the carried label columns present in the inputs.

    A column of one type in every file keeps it (a timestamp, a list, a struct); otherwise
    its type is one that holds every file's values: integers become int64, integers and
    floats float64, any other mix string (JSON for lists and structs), so one odd shard
    cannot fail the Parquet sink after the whole run.  A name the scores table
    already uses is refused here, before anything is read.
    """
    taken = set(scores_schema().names)
    for name in carry_columns:
        if name in taken:
            raise InputError(f"--carry-column {name}: the scores table has its own '{name}' "
                             "column; carry another column, or rename this one in the input")
    if not carry_columns:
        return []
    if any(f.format.startswith("tfrecord") for f in files):
        return [pa.field("label", pa.int64())] if "label" in carry_columns else []
    types: dict[str, set[pa.DataType]] = {}
    for f in files:
        if f.format in ("parquet", "csv") and f.size:
            schema = table_schema(f)
            for name in carry_columns:
                if schema is not None and name in schema.names:
                    types.setdefault(name, set()).add(schema.field(name).type)
    return [pa.field(name, _unified(types[name])) for name in carry_columns if name in types]


def _unified(types: set[pa.DataType]) -> pa.DataType:
    if len(types) == 1 and not pa.types.is_null(next(iter(types))):
        return next(iter(types))
    kinds = {_kind(t) for t in types}
    if kinds <= {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    if kinds == {"bool"}:
        return pa.bool_()
    return pa.string()


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    return "string"
