"""Hypothesis values of any Avro type the contract uses, for fastavro to write: the fast paths'
tests compare what the compiled readers and the writer make of them with what fastavro makes."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from hypothesis import strategies as st

_UTC_ONLY = st.just(UTC)


def avro_values(
    schema: Any, *, nan: bool = False, zones: st.SearchStrategy[tzinfo] = _UTC_ONLY
) -> st.SearchStrategy[Any]:
    """Values of an Avro type (`nan`: doubles may be NaN; `zones`: the timestamps' time zones)."""
    primitives = {
        "null": st.none(), "boolean": st.booleans(), "string": st.text(max_size=12),
        "bytes": st.binary(max_size=8), "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1), "double": st.floats(allow_nan=nan),
    }  # fmt: skip
    timestamps = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones)

    def of(schema: Any) -> st.SearchStrategy[Any]:
        if isinstance(schema, list):
            return st.one_of(*(of(b) for b in schema))
        if not isinstance(schema, dict):
            return primitives[schema]
        if schema.get("logicalType") == "timestamp-micros":
            return timestamps
        kind = schema["type"]
        if kind == "record":
            return st.fixed_dictionaries({f["name"]: of(f["type"]) for f in schema["fields"]})
        if kind == "array":
            return st.lists(of(schema["items"]), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=5), of(schema["values"]), max_size=3)
        return of(kind)

    return of(schema)
