"""Which table columns hold a model's features, and one Arrow batch as its feature matrix.

A feature is one number per row: a numeric column, or one element of a column of number
lists (an embedding, as Spark and pandas write them to Parquet), named ``column[i]``.
Training expands such a column into its elements, so a model's feature names are always
scalar names; reading resolves each name back to its column: a name that is a column of
the file is that column, else ``emb[3]`` is element 3 of the list column ``emb``
(``vigil.schemas.features``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vigil.schemas.features import source


def number_type(t: pa.DataType) -> bool:
    """Whether a column of this Arrow type holds numbers (also dictionary-encoded): such a
    column is cast to float64 whole; any other is parsed as text, value by value."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
        or pa.types.is_decimal(t)


def vector_type(t: pa.DataType) -> bool:
    """Whether a column of this Arrow type holds lists of numbers (an embedding column)."""
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
        and number_type(t.value_type)


@dataclass(frozen=True)
class Vector:
    """The elements of one list column that a model reads, and the row length it expects:
    the full length when the model has every element (a row of another length is another
    embedding), else any length that holds the highest element."""
    column: str
    indices: tuple[int, ...]

    @property
    def length(self) -> int | None:
        return len(self.indices) if self.indices == tuple(range(len(self.indices))) else None

    def fits(self, lengths: np.ndarray) -> np.ndarray:
        """Which rows' list lengths (-1 for a null list) hold the model's elements."""
        if self.length is not None:
            return lengths == self.length
        return lengths > max(self.indices)

    def expected(self) -> str:
        return (f"{self.length} values" if self.length is not None
                else f"at least {max(self.indices) + 1} values")


def table_columns(names: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The table's columns that hold these features, each once, in the features' order
    (a name no column holds is kept, so reading it fails with Arrow's own message)."""
    out: dict[str, None] = {}
    columns = set(columns)
    for name in names:
        found = source(name, columns)
        out[found[0] if found else name] = None
    return list(out)


def feature_matrix(batch: pa.RecordBatch, names: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(float64 values (rows, features) with NaN for nulls, mask of values that are not
    numbers, {row: why its shape is wrong}) of the features ``names`` in one batch.

    A row whose list column is null or holds another number of values than the model's
    is a shape problem, reported per row; its values are NaN.
    """
    n = batch.num_rows
    columns = set(batch.schema.names)
    x = np.full((n, len(names)), np.nan)
    bad = np.zeros((n, len(names)), dtype=bool)
    vectors: dict[str, list[tuple[int, int]]] = {}     # column -> [(feature position, index)]
    for j, name in enumerate(names):
        column, index = source(name, columns) or (name, None)
        if index is None:
            x[:, j], bad[:, j] = _numeric(batch.column(column))
        else:
            vectors.setdefault(column, []).append((j, index))
    wrong: dict[int, str] = {}
    for column, wanted in vectors.items():
        positions = [j for j, _ in wanted]
        vector = Vector(column, tuple(i for _, i in wanted))
        values, lengths = _elements(batch.column(column), vector)
        x[:, positions] = values
        for r in np.flatnonzero(~vector.fits(lengths)):
            held = "is null" if lengths[r] < 0 else f"holds {lengths[r]} values"
            wrong.setdefault(int(r), f"column '{column}' {held}; the model reads {vector.expected()}")
    return x, bad, wrong


def _numeric(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for nulls, mask of values that are not numbers)."""
    if number_type(column.type):
        return _float64(column), np.zeros(len(column), dtype=bool)
    texts = pc.cast(column, pa.string()).to_pylist()
    values = np.empty(len(texts))
    bad = np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        try:
            values[i] = float(t) if t is not None else np.nan
        except ValueError:
            values[i], bad[i] = np.nan, True
    return values, bad


def _elements(column: pa.Array, vector: Vector) -> tuple[np.ndarray, np.ndarray]:
    """(float64 (rows, len(indices)) of the wanted elements, NaN where a row does not fit;
    each row's list length, -1 for a null list)."""
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    lengths = np.asarray(lengths, dtype=np.int64)
    fits = vector.fits(lengths)
    rows = column if fits.all() else column.filter(pa.array(fits))
    flat = _float64(pc.list_flatten(rows))
    if vector.length is not None:       # every row that fits holds exactly the model's elements
        picked = flat.reshape(-1, vector.length)
    else:
        starts = np.concatenate([[0], np.cumsum(lengths[fits])[:-1]]).astype(np.int64)
        picked = flat[starts[:, None] + np.asarray(vector.indices)[None, :]]
    if fits.all():
        return picked, lengths
    out = np.full((len(column), len(vector.indices)), np.nan)
    out[fits] = picked
    return out, lengths


def _float64(values: pa.Array) -> np.ndarray:
    """Numbers as float64, NaN for nulls.  Integers and floats convert in numpy, which is
    several times faster than Arrow's cast (and rounds an integer past 2**53 as float64
    arithmetic does, where Arrow's checked cast refuses it)."""
    t = values.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
