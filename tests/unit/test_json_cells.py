"""The JSON cells of record tables (an execution's gates, a signal's features) are to_json's text,
whatever the values: the direct path for the common ones, to_json for the rest."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from pipeline.json_cells import JsonCells, to_json, to_json_cell
from schemas.records import GateResult

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.1 + 0.2, 1e16, 5e-324]),
    st.text(), st.sampled_from(['say "no"', "x,y", "caf\u00e9", "\n\t\\", "\U0001f600"]),
)  # fmt: skip
odd = st.one_of(st.lists(st.integers(), max_size=2),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))  # fmt: skip
gates = st.builds(GateResult, name=st.one_of(st.text(), st.integers()),
                  passed=st.one_of(st.booleans(), st.integers(0, 1)),
                  value=st.one_of(scalars, odd), limit=scalars, reason=st.text())  # fmt: skip


def written(write: Any, value: Any) -> Any:
    """The text, or the kind of error (a map whose keys do not sort is to_json's TypeError)."""
    try:
        return write(value)
    except TypeError as exc:
        return type(exc)


@given(st.lists(gates, max_size=6))
@example([GateResult("g", True, math.nan, -0.0, ""), GateResult("h", False, math.inf, 0.0, "")])
@example([GateResult("g", True, 1, 1.0, ""), GateResult("g", 1, True, -math.inf, "")])  # type: ignore[arg-type]
def test_gates_are_written_as_to_json_writes_them(value: list[GateResult]) -> None:
    assert written(to_json_cell, value) == written(to_json, value)


@given(st.dictionaries(st.one_of(st.text(), st.integers()), st.one_of(scalars, odd), max_size=6))
@example({"a": math.nan, "b": -math.inf, "c": -0.0, "d": True, "e": 10**20})
def test_maps_are_written_as_to_json_writes_them(value: dict[Any, Any]) -> None:
    assert written(to_json_cell, value) == written(to_json, value)


def test_the_usual_gates_take_the_direct_path() -> None:
    usual = [GateResult("confidence", True, 0.745, 0.6, "confidence >= minimum"),
             GateResult("already_held", True, "flat", "one entry per symbol", "ok"),
             GateResult("submit_rate", False, 3.0, None, "caf\u00e9 \"limit\"")]  # fmt: skip
    assert to_json_cell(usual) == to_json(usual)
    assert to_json_cell([*usual, ["not a gate"]]) == to_json([*usual, ["not a gate"]])


@given(st.lists(st.lists(gates, max_size=3), max_size=8))
@example([[GateResult("g", True, 0.0, 1, "")], [GateResult("g", True, -0.0, 1, "")],
          [GateResult("g", True, 1, True, "")], [GateResult("g", True, 1.0, 1, "")],
          [GateResult("g", True, True, 1.0, "")], [GateResult("g", 1, 1, 1, "")]])  # type: ignore[arg-type]
def test_a_column_of_gate_lists_is_written_cell_by_cell_as_to_json_writes_it(column: list[Any]) -> None:
    cells = JsonCells(limit=4)  # gate texts kept across cells, and dropped when there are too many
    assert [written(cells, value) for value in column] == [written(to_json, value) for value in column]

