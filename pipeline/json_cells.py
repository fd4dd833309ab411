"""JSON cells of record tables: json.dumps(sort_keys) of a record's maps and lists, and the same
text made directly for the commonest cells (an execution's gates), several times faster.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from json.encoder import encode_basestring_ascii
from operator import attrgetter
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
    """to_json(value), the encoder's work done directly for an execution's list of gates."""
    return JsonCells()(value)


class JsonCells:
    """`to_json_cell` for the cells of one column: a gate's text is kept by its field values (and
    their types), as most gates of a run repeat one another's (the same check passing alike); anything
    else (a map of numbers too: the C encoder is the faster there) goes to to_json."""

    def __init__(self, limit: int = 1 << 18) -> None:
        self._gates: dict[tuple[Any, ...], str] = {}
        self._limit = limit  # gate texts kept at most (then kept afresh)

    def __call__(self, value: Any) -> str:
        kind = type(value)
        if kind is list and _GATE_LAYOUT_KNOWN:
            known = self._gates
            parts = []
            for g in value:
                if type(g) is not GateResult:
                    return to_json(value)
                name, passed, val, limit, reason = _GATE(g)
                if type(passed) is not bool:  # True == 1: a key must not make them one
                    return to_json(value)
                # only texts of str names and reasons are kept, and no other value equals a str
                key = (name, passed, val, limit, reason, type(val), type(limit))
                try:
                    text = known.get(key)
                except TypeError:  # a value that is a list or a map: to_json writes the whole list
                    return to_json(value)
                if text is None:
                    text = _gate_json(name, passed, val, limit, reason)
                    if text is None:
                        return to_json(value)
                    if _keyable(val) and _keyable(limit):
                        if len(known) >= self._limit:
                            known.clear()
                        known[key] = text
                parts.append(text)
            return "[" + ", ".join(parts) + "]"
        return to_json(value)


_GATE = attrgetter("name", "passed", "value", "limit", "reason")


def _keyable(value: Any) -> bool:
    """Whether equal values of one type have one text: not so for 0.0 and -0.0."""
    return type(value) is not float or value != 0.0


def _gate_json(name: Any, passed: Any, value: Any, limit: Any, reason: Any) -> str | None:
    """A gate's JSON object (to_json's text), or None when to_json must write the whole list."""
    value, limit = _json_scalar(value), _json_scalar(limit)
    if type(name) is not str or type(reason) is not str or type(passed) is not bool \
            or value is None or limit is None:
        return None
    return (f'{{"limit": {limit}, "name": {_json_text(name)}, "passed": {"true" if passed else "false"}, '
            f'"reason": {_json_text(reason)}, "value": {value}}}')


_json_text = encode_basestring_ascii
_GATE_LAYOUT_KNOWN = tuple(sorted(f.name for f in dataclasses.fields(GateResult))) == _GATE_FIELDS
