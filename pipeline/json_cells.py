"""JSON cells of record tables: json.dumps(sort_keys) of a record's maps and lists, and the same
text made directly for the common cells (an execution's gates, a signal's features), ~10x faster.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from schemas.records import GateResult


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "to_avro"):
        return value.to_avro()
    raise TypeError(f"not JSON: {type(value).__name__}")


def to_json(value: Any) -> str:
    """json.dumps(value, default=json_default, sort_keys=True), with one encoder for all: records
    hold no cycles to check for."""
    return _ENCODER(value)


_ENCODER = json.JSONEncoder(default=json_default, sort_keys=True, check_circular=False).encode
_GATE_FIELDS = ("limit", "name", "passed", "reason", "value")  # sorted, as to_json writes a gate


def _json_scalar(value: Any) -> str | None:
    """What to_json writes for a str, finite float, int, bool or None; None for anything else."""
    kind = type(value)
    if kind is str:
        return _json_text(value)
    if kind is float:
        return float.__repr__(value) if value - value == 0.0 else None  # NaN and infinities: to_json
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return None


def to_json_cell(value: Any) -> str:
    """to_json(value), the encoder's work done directly for the common cells: a list of gates and
    a map of numbers (an execution's gates, a signal's features); anything else goes to to_json."""
    kind = type(value)
    if kind is list and _GATE_LAYOUT_KNOWN:
        parts = []
        for g in value:
            text = _gate_json(g) if type(g) is GateResult else None
            if text is None:
                return to_json(value)
            parts.append(text)
        return "[" + ", ".join(parts) + "]"
    if kind is dict:
        items = []
        for key in sorted(value) if all(type(k) is str for k in value) else ():
            cell = _json_scalar(value[key])
            if cell is None:
                return to_json(value)
            items.append(f"{_json_text(key)}: {cell}")
        if len(items) != len(value):
            return to_json(value)
        return "{" + ", ".join(items) + "}"
    return to_json(value)


def _gate_json(g: GateResult) -> str | None:
    """A gate's JSON object (to_json's text), or None when to_json must write the whole list."""
    name, reason, passed = g.name, g.reason, g.passed
    value, limit = _json_scalar(g.value), _json_scalar(g.limit)
    if type(name) is not str or type(reason) is not str or type(passed) is not bool \
            or value is None or limit is None:
        return None
    return (f'{{"limit": {limit}, "name": {_json_text(name)}, "passed": {"true" if passed else "false"}, '
            f'"reason": {_json_text(reason)}, "value": {value}}}')


_json_text = encode_basestring_ascii
_GATE_LAYOUT_KNOWN = tuple(sorted(f.name for f in dataclasses.fields(GateResult))) == _GATE_FIELDS
