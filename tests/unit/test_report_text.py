"""Text columns of record tables (JSON cells, say) become Arrow strings holding exactly the texts,
whether made from their concatenation (ASCII, none missing) or one by one."""

from __future__ import annotations

import csv
import io

import pyarrow as pa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.report import _csv_cell, _text_array


@given(st.lists(st.one_of(st.none(), st.text(max_size=12), st.text("ab\",\r\n{}", max_size=12)), max_size=30))
@example([])
@settings(deadline=None)  # the first case loads Arrow's kernels
@example(["", "", ""])
@example(["caf\u00e9", "x"])
@example(['[{"limit": 0.6}]', "", "{}"])
def test_a_text_column_holds_exactly_the_texts(texts: list[str | None]) -> None:
    array = _text_array(texts)
    array.validate(full=True)
    assert array.type == pa.string()
    assert array.to_pylist() == texts


@given(st.text(max_size=12), st.text("ab\",\r\n ", max_size=12))
def test_a_cell_is_quoted_as_csv_writer_quotes_it(text: str, odd: str) -> None:
    for value in (text, odd):
        line = io.StringIO()
        csv.writer(line).writerow(["x", value])  # a field of a row of several, as in a table
        assert "x," + _csv_cell(value) + "\r\n" == line.getvalue()
