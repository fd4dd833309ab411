"""Translate a bar at the boundary, once: Alpaca's wire shape (stream or REST) -> a checked Bar or a
BarRejected with its reason, shared by the stream, backfill, replay and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from opsinfra.errors import PipelineError
from schemas.records import BAR_SOURCES, Bar

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Alpaca's bar fields, stream and REST alike (the same table as alpaca.data.mappings.BAR_MAPPING)
WIRE_FIELDS = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "t": "ts"}


class BarRejected(PipelineError):
    """A bar that must not reach the topic; `reason` is what the DLQ records, `kind` the reason
    without the values, for counting rejections."""

    def __init__(self, reason: str, kind: str | None = None) -> None:
        self.reason = reason
        self.kind = kind or reason
        super().__init__(reason)


def parse_ts(value: Any) -> datetime:
    """A bar timestamp from msgpack's Timestamp (stream), RFC 3339 text (REST) or a datetime."""
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime()  # aware UTC
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise BarRejected("timestamp without a timezone", "ts without a timezone")
        return value.astimezone(UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        head, dot, rest = text.partition(".")
        if dot:  # RFC 3339 allows nanoseconds; datetime holds microseconds
            digits = len(rest) - len(rest.lstrip("0123456789"))
            frac = rest[:digits]
            rest = (frac[:6] or "0") + rest[digits:]
            text = f"{head}.{rest}"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise BarRejected(f"unparseable timestamp {value!r}", "ts unparseable") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # the contract: no offset means UTC
        return parsed.astimezone(UTC)
    raise BarRejected(f"timestamp of type {type(value).__name__}", "ts of a wrong type")


def _number(raw: Mapping[str, Any], key: str, name: str) -> float:
    if key not in raw or raw[key] is None:
        raise BarRejected(f"missing field {name} ({key!r})", f"{name} missing")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BarRejected(f"{name} is not a number: {value!r}", f"{name} not a number")
    return float(value)


def _count(raw: Mapping[str, Any], key: str, name: str, *, required: bool) -> int | None:
    if raw.get(key) is None:
        if required:
            raise BarRejected(f"missing field {name} ({key!r})", f"{name} missing")
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BarRejected(f"{name} is not a number: {value!r}", f"{name} not a number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise BarRejected(f"{name} is not an integer: {value!r}", f"{name} not an integer")
    return int(value)


def parse_bar(
    raw: Mapping[str, Any],
    *,
    source: str,
    revision: int = 0,
    symbol: str | None = None,
) -> Bar:
    """One Alpaca bar (`{"S", "t", "o", "h", "l", "c", "v", "n", "vw"}`) as a Bar record.

    REST bars carry no "S" (they are grouped by symbol): pass `symbol`. Types are checked here,
    values in `validate_bar`.
    """
    if source not in BAR_SOURCES:
        raise ValueError(f"unknown bar source {source!r}")
    sym = raw.get("S", symbol)
    if not isinstance(sym, str) or not sym:
        raise BarRejected("missing symbol ('S')", "symbol missing")
    if "t" not in raw:
        raise BarRejected("missing field ts ('t')", "ts missing")
    ts = parse_ts(raw["t"])
    vwap = raw.get("vw")
    if vwap is not None and (isinstance(vwap, bool) or not isinstance(vwap, int | float)):
        raise BarRejected(f"vwap is not a number: {vwap!r}", "vwap not a number")
    volume = _count(raw, "v", "volume", required=True)
    assert volume is not None
    return Bar(
        symbol=sym.upper(),
        ts=ts,
        open=_number(raw, "o", "open"),
        high=_number(raw, "h", "high"),
        low=_number(raw, "l", "low"),
        close=_number(raw, "c", "close"),
        volume=volume,
        trade_count=_count(raw, "n", "trade_count", required=False),
        vwap=None if vwap is None else float(vwap),
        source=source,
        revision=revision,
    )


def validate_bar(
    bar: Bar,
    *,
    now: datetime | None = None,
    symbols: Collection[str] | None = None,
    max_skew: timedelta = timedelta(seconds=5),
) -> Bar:
    """The bar itself, or BarRejected naming the first rule it breaks.

    `now` enables the "not in the future" rule (live and backfill; replayed history skips it),
    `symbols` the "subscribed symbol" rule.
    """
    prices = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close}
    if bar.vwap is not None:
        prices["vwap"] = bar.vwap
    for name, value in prices.items():
        if not math.isfinite(value):
            raise BarRejected(f"{name} is not finite: {value!r}", f"{name} not finite")
    if bar.high < bar.low:
        raise BarRejected(f"high {bar.high} < low {bar.low}", "high < low")
    for name in ("open", "close"):
        if not bar.low <= prices[name] <= bar.high:
            raise BarRejected(f"{name} {prices[name]} outside [low {bar.low}, high {bar.high}]",
                              f"{name} outside [low, high]")
    if bar.low < 0:
        raise BarRejected(f"negative price: low {bar.low}", "negative price")
    if bar.volume < 0:
        raise BarRejected(f"negative volume {bar.volume}", "negative volume")
    if bar.trade_count is not None and bar.trade_count < 0:
        raise BarRejected(f"negative trade_count {bar.trade_count}", "negative trade_count")
    if bar.ts.second or bar.ts.microsecond:
        raise BarRejected(f"timestamp {bar.ts.isoformat()} is not on a minute boundary",
                          "ts not on a minute boundary")
    if now is not None and bar.ts > now + max_skew:
        raise BarRejected(f"timestamp {bar.ts.isoformat()} is in the future (now {now.isoformat()})",
                          "ts in the future")
    if symbols is not None and bar.symbol not in symbols:
        raise BarRejected(f"symbol {bar.symbol} is not subscribed", "symbol not subscribed")
    if bar.revision < 0:
        raise BarRejected(f"negative revision {bar.revision}", "negative revision")
    return bar


def raw_payload(raw: Mapping[str, Any]) -> bytes:
    """The raw message as msgpack bytes, for the DLQ (Timestamps pack back as ext -1)."""
    try:
        return bytes(msgpack.packb(dict(raw), use_bin_type=True))
    except (TypeError, ValueError):
        return repr(dict(raw)).encode("utf-8", "replace")


#: the kinds `validate_bar` names, in the order it checks them; `validate_columns` answers with
#: the position of the first one a row breaks (0: none)
RULE_KINDS = (
    None, "open not finite", "high not finite", "low not finite", "close not finite", "vwap not finite",
    "high < low", "open outside [low, high]", "close outside [low, high]", "negative price",
    "negative volume", "negative trade_count", "ts not on a minute boundary", "ts in the future",
    "symbol not subscribed", "negative revision",
)  # fmt: skip


def validate_columns(
    columns: Mapping[str, Any],
    *,
    now: datetime | None = None,
    subscribed: Any = None,
    max_skew: timedelta = timedelta(seconds=5),
) -> Any:
    """`validate_bar` over numpy columns at once: per row, the index in RULE_KINDS of the first rule
    it breaks (0 when it breaks none), rule for rule in `validate_bar`'s order.

    Columns: open, high, low, close, vwap (float64), vwap_null, volume, trade_count (int64),
    trade_count_null, ts (int64 epoch microseconds, UTC), revision (int64). `subscribed` (a bool per
    row: the symbol is in the set) enables the symbol rule, `now` the future rule.
    """
    import numpy as np

    c = columns
    o, h, lo, cl = c["open"], c["high"], c["low"], c["close"]
    broken = [
        ~np.isfinite(o), ~np.isfinite(h), ~np.isfinite(lo), ~np.isfinite(cl),
        ~c["vwap_null"] & ~np.isfinite(c["vwap"]),
        h < lo, ~((lo <= o) & (o <= h)), ~((lo <= cl) & (cl <= h)), lo < 0, c["volume"] < 0,
        ~c["trade_count_null"] & (c["trade_count"] < 0), c["ts"] % 60_000_000 != 0,
    ]  # fmt: skip
    n = len(o)
    never = np.zeros(n, bool)
    if now is not None:
        limit = (now + max_skew - _EPOCH) // timedelta(microseconds=1)
        broken.append(c["ts"] > limit)
    else:
        broken.append(never)
    broken.append(never if subscribed is None else ~np.asarray(subscribed, bool))
    broken.append(c["revision"] < 0)
    code = np.zeros(n, np.int8)
    for kind in range(len(broken), 0, -1):  # the last assignment wins: the first rule broken
        code[broken[kind - 1]] = kind
    return code
