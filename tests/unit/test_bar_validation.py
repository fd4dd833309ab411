"""parse_bar / validate_bar on payloads shaped as Alpaca sends them (stream msgpack, REST JSON)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest

from connectors.alpaca_protocol import decode_frame
from connectors.validation import BarRejected, parse_bar, parse_ts, raw_payload, validate_bar
from schemas.records import Bar

TS = datetime(2021, 2, 22, 19, 15, tzinfo=UTC)
NOW = TS + timedelta(minutes=1, seconds=2)
# Alpaca's documented bar message, as it arrives in a msgpack frame ("t" is a msgpack Timestamp)
STREAM_FRAME = msgpack.packb([{
    "T": "b", "S": "SPY", "o": 388.985, "h": 389.13, "l": 388.975, "c": 389.12, "v": 49378,
    "t": msgpack.Timestamp.from_datetime(TS), "n": 461, "vw": 389.062639,
}])
# Alpaca's documented REST bar (GET /v2/stocks/bars), grouped by symbol
REST_BAR = {"t": "2021-02-22T19:15:00Z", "o": 388.985, "h": 389.13, "l": 388.975, "c": 389.12,
            "v": 49378, "n": 461, "vw": 389.062639}
EXPECTED = Bar("SPY", TS, 388.985, 389.13, 388.975, 389.12, 49378, 461, 389.062639, "live", 0)


def stream_msg(**changes: Any) -> dict[str, Any]:
    (msg,) = decode_frame(STREAM_FRAME)
    msg.update(changes)
    return {k: v for k, v in msg.items() if v is not ...}


def check(msg: dict[str, Any], **kw: Any) -> Bar:
    return validate_bar(parse_bar(msg, source="live"), now=NOW, symbols={"SPY"}, **kw)


def test_a_recorded_stream_bar_parses() -> None:
    assert check(stream_msg()) == EXPECTED


def test_a_recorded_rest_bar_parses_with_its_symbol() -> None:
    bar = validate_bar(parse_bar(REST_BAR, source="backfill", symbol="SPY"), now=NOW)
    assert bar == Bar("SPY", TS, 388.985, 389.13, 388.975, 389.12, 49378, 461, 389.062639,
                      "backfill", 0)
    assert bar.ts.tzinfo is not None


def test_an_updated_bar_keeps_the_revision_it_is_given() -> None:
    bar = parse_bar(stream_msg(T="u"), source="updated", revision=2)
    assert (bar.source, bar.revision) == ("updated", 2)


def test_optional_fields_may_be_absent() -> None:
    bar = check(stream_msg(n=..., vw=...))
    assert (bar.trade_count, bar.vwap) == (None, None)


def test_integral_float_volume_is_accepted() -> None:
    assert check(stream_msg(v=49378.0)).volume == 49378


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"h": 388.0}, "high 388.0 < low 388.975"),
        ({"o": 390.0}, "open 390.0 outside"),
        ({"c": 388.0}, "close 388.0 outside"),
        ({"v": -1}, "negative volume"),
        ({"v": 10.5}, "volume is not an integer"),
        ({"v": math.nan}, "volume is not an integer"),
        ({"v": "49378"}, "volume is not a number"),
        ({"v": True}, "volume is not a number"),
        ({"n": -3}, "negative trade_count"),
        ({"o": math.nan}, "open is not finite"),
        ({"h": math.inf}, "high is not finite"),
        ({"vw": -math.inf}, "vwap is not finite"),
        ({"c": None}, "missing field close"),
        ({"l": ...}, "missing field low"),
        ({"t": msgpack.Timestamp.from_datetime(TS + timedelta(seconds=30))}, "not on a minute boundary"),
        ({"t": msgpack.Timestamp.from_datetime(TS + timedelta(minutes=5))}, "in the future"),
        ({"t": "yesterday"}, "unparseable timestamp"),
        ({"t": 1614021300}, "timestamp of type int"),
        ({"t": ...}, "missing field ts"),
        ({"S": "TSLA"}, "symbol TSLA is not subscribed"),
        ({"S": ...}, "missing symbol"),
    ],
)
def test_bad_bars_are_rejected_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(BarRejected) as err:
        check(stream_msg(**changes))
    assert reason in err.value.reason


def test_a_small_clock_skew_is_tolerated() -> None:
    late_clock = TS - timedelta(seconds=3)
    bar = parse_bar(stream_msg(), source="live")
    assert validate_bar(bar, now=late_clock) == EXPECTED
    with pytest.raises(BarRejected):
        validate_bar(bar, now=late_clock, max_skew=timedelta(0))


def test_rules_that_need_context_are_skipped_without_it() -> None:
    far_future = parse_bar(stream_msg(S="TSLA", t=msgpack.Timestamp.from_datetime(TS + timedelta(days=9))),
                           source="replay")
    assert validate_bar(far_future).symbol == "TSLA"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-02-22T19:15:00Z", TS),
        ("2021-02-22T14:15:00-05:00", TS),
        ("2021-02-22T19:15:00", TS),  # no offset means UTC
        ("2021-02-22T19:15:00.000000000Z", TS),  # nanoseconds, as Alpaca writes them
        ("2021-02-22 19:15:00+00:00", TS),
    ],
)
def test_timestamps_in_every_shape(text: str, expected: datetime) -> None:
    assert parse_ts(text) == expected


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(BarRejected, match="without a timezone"):
        parse_ts(datetime(2021, 2, 22, 19, 15))  # noqa: DTZ001 - the point of the test


def test_unknown_source_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_bar(stream_msg(), source="guess")


def test_raw_payload_round_trips_the_message() -> None:
    msg = stream_msg(h=1.0)
    assert msgpack.unpackb(raw_payload(msg)) == msg
