"""Feature names resolved to table columns: numbers, and elements of number-list columns."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vigil.pipeline.columns import feature_matrix, table_columns, vector_type
from vigil.schemas.features import element_names, source

ROWS = [[1.0, 2.0, 3.0], None, [4.0, 5.0], [6.0, None, 8.0]]


@pytest.mark.parametrize("kind", [pa.list_(pa.float32()), pa.large_list(pa.float64()),
                                  pa.list_(pa.int16())])
def test_list_elements_become_features_and_bad_rows_say_why(kind):
    batch = pa.record_batch({"emb": pa.array(ROWS, kind), "size": pa.array([10, 11, 12, 13])})
    x, bad, wrong = feature_matrix(batch, ["size", *element_names("emb", 3)])
    assert x[0].tolist() == [10, 1, 2, 3]
    assert np.isnan(x[3, 2]) and x[3, 3] == 8          # a null element is a missing value
    assert wrong == {1: "column 'emb' is null; the model reads 3 values",
                     2: "column 'emb' holds 2 values; the model reads 3 values"}
    assert not bad.any() and np.isnan(x[1:3, 1:]).all()


def test_a_fixed_size_list_column_and_some_of_its_elements():
    batch = pa.record_batch({"emb": pa.array([[1, 2, 3, 4], [5, 6, 7, 8]], pa.list_(pa.float32(), 4))})
    x, _, wrong = feature_matrix(batch, ["emb[3]", "emb[1]"])
    assert x.tolist() == [[4, 2], [8, 6]] and wrong == {}
    # With only some elements the model cannot know the full length: a row needs the highest.
    short = pa.record_batch({"emb": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0]])})
    assert feature_matrix(short, ["emb[3]"])[2] == {0: "column 'emb' holds 2 values; the model "
                                                       "reads at least 4 values"}


def test_a_column_named_like_an_element_is_that_column():
    columns = ["emb[0]", "emb"]
    assert source("emb[0]", columns) == ("emb[0]", None)
    assert source("emb[1]", columns) == ("emb", 1)
    assert source("other[1]", columns) is None
    assert table_columns(["emb[0]", "emb[1]", "emb[2]", "x"], columns) == ["emb[0]", "emb", "x"]


def test_only_lists_of_numbers_are_vectors():
    assert vector_type(pa.list_(pa.float32())) and vector_type(pa.list_(pa.bool_(), 3))
    assert not vector_type(pa.list_(pa.string())) and not vector_type(pa.float64())
    assert not vector_type(pa.struct([("a", pa.float64())]))


def test_a_beam_row_with_a_vector_field_gives_the_models_features():
    import apache_beam as beam

    from vigil.pipeline.handler import _array
    row = beam.Row(id="r1", emb=[1.0, 2.0, 3.0], size=7.0)
    assert _array(row, ("size", "emb[2]", "emb[0]")).tolist() == [7.0, 3.0, 1.0]
