"""How a model names its features: a table column by its name, or element i of a column
of number lists (an embedding) as ``column[i]``.

A name that is itself a column of the table is that column; otherwise ``emb[3]`` is
element 3 of the column ``emb``.  The command line (``vigil.pipeline.columns``) and the
Python API (``vigil.models.detector``) read tables by this one rule.
"""
from __future__ import annotations

import re
from typing import Container

_ELEMENT = re.compile(r"^(?P<column>.+)\[(?P<index>\d+)\]$")


def element_names(column: str, length: int) -> list[str]:
    """The feature names of a vector column's elements: ``emb[0]`` ... ``emb[length-1]``."""
    return [f"{column}[{i}]" for i in range(length)]


def column_name(name: str) -> str:
    """The column a feature name refers to: ``emb`` for ``emb[3]``, else the name itself."""
    m = _ELEMENT.match(name)
    return m["column"] if m else name


def source(name: str, columns: Container[str]) -> tuple[str, int | None] | None:
    """(column, element index or None) that holds feature ``name`` in a table with these
    columns (a set or a dict: looked up once per feature); None if no column does."""
    if name in columns:
        return name, None
    m = _ELEMENT.match(name)
    if m and m["column"] in columns:
        return m["column"], int(m["index"])
    return None
