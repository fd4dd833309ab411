"""The features agent through the real broker: its output equals FeatureEngine run directly on the
same bars; duplicates, updated bars and out-of-order bars; poison input to the DLQ while the stream
goes on. Also the fast features.1m writer against the codec, in both framings (no broker)."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsinfra.endpoints import Endpoints
from opsinfra.kafka_io import Consumed
from opsinfra.settings import Settings
from schemas.avro_fast import RecordWriter
from schemas.codec import HeaderCodec, RegistryCodec
from schemas.records import Bar, DeadLetter, Features
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import BARS, FEATURES
from streams.app import PipelineApp, create_app, run_app
from streams.features_agent import (
    APP_ID,
    WORKER_HEADER,
    FeaturesConfig,
    FeaturesHandler,
    _feature_samples,
    register,
)
from tests.samples import poll_until
from trading.features import FeatureEngine, InvalidBar, OutOfOrderBar

T0 = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
Key = tuple[str, datetime, int]


def walk(symbols: Iterable[str], minutes: int, seed: int = 1, start: int = 0) -> list[Bar]:
    """Random-walk bars, minute by minute, every symbol each minute."""
    rng = random.Random(seed)
    out = []
    price = {s: 50 + 100 * rng.random() for s in symbols}
    for m in range(start, start + minutes):
        for s in price:
            price[s] *= 1 + rng.gauss(0, 0.002)
            c = round(price[s], 4)
            out.append(Bar(s, T0 + timedelta(minutes=m), c, c + 0.1, c - 0.1, c, rng.randint(0, 5000)))
    return out


def with_revisions(bars: list[Bar], every: int, seed: int = 2) -> list[Bar]:
    """Each `every`-th bar is followed by an updated bar (revision 1) and a repeat of it."""
    rng = random.Random(seed)
    out = []
    for i, bar in enumerate(bars):
        out.append(bar)
        if i % every == every - 1:
            updated = replace(bar, close=bar.close * (1 + rng.gauss(0, 0.001)), volume=bar.volume + 7,
                              source="updated", revision=1)  # fmt: skip
            out += [updated, updated]
    return out


def reference(bars: Iterable[Bar]) -> dict[Key, Features]:
    """What an uninterrupted agent emits: one engine per symbol, bars in per-symbol order."""
    engines: dict[str, FeatureEngine] = {}
    out: dict[Key, Features] = {}
    for b in bars:
        engine = engines.setdefault(b.symbol, FeatureEngine(b.symbol))
        try:
            values = engine.update(b.ts, b.close, b.volume, b.revision)
        except (OutOfOrderBar, InvalidBar):
            continue
        if values is not None:
            out[(b.symbol, b.ts, b.revision)] = values
    return out


def same(a: Features, b: Features) -> bool:
    """Field-wise equality where NaN equals NaN (a record must equal its re-emission exactly)."""
    for x, y in zip(a.to_avro().values(), b.to_avro().values(), strict=True):
        if x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
            return False
    return True


def read_features(settings: Settings, bootstrap: str, **kw: Any) -> list[tuple[Consumed, Features]]:
    got = read_records(settings, bootstrap, HeaderCodec(), FEATURES, quiet_s=0.3, **kw)
    assert all(isinstance(r, Features) for _, r in got), [r for _, r in got if not isinstance(r, Features)]
    return [(m, r) for m, r in got if isinstance(r, Features)]


def read_dead_letters(settings: Settings, bootstrap: str) -> list[DeadLetter]:
    got = read_records(settings, bootstrap, HeaderCodec(), BARS.dlq, quiet_s=0.3)
    assert all(isinstance(r, DeadLetter) for _, r in got)
    return [r for _, r in got if isinstance(r, DeadLetter)]


def worker_of(msg: Consumed) -> str:
    return dict(msg.headers)[WORKER_HEADER].decode()  # type: ignore[union-attr]


class InThreadStage:
    """One features worker in this process, as `run` builds it, with its handler kept for asserts."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.handler: FeaturesHandler | None = None
        self.failure: list[BaseException] = []
        endpoints = Endpoints(bootstrap, "", None, embedded=False)

        def registrar(papp: PipelineApp) -> None:
            self.handler = register(papp, config=FeaturesConfig(worker_id="in-thread"))

        self.papp = create_app(settings, endpoints, app_id=APP_ID, agents=[registrar])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            run_app(self.papp, self.stop)
        except BaseException as exc:  # surfaced by the test
            self.failure.append(exc)

    def alive(self) -> bool:
        return self.thread.is_alive()


@pytest.fixture
def stage(provisioned: Settings, kafka_bootstrap: str) -> Iterator[InThreadStage]:
    s = InThreadStage(provisioned, kafka_bootstrap)
    s.thread.start()
    try:
        yield s
    finally:
        s.stop.set()
        s.thread.join(60)
    assert not s.thread.is_alive() and not s.failure, s.failure


pytestmark = pytest.mark.integration


def test_features_equal_the_engine_run_directly_on_the_same_bars(
    provisioned: Settings, kafka_bootstrap: str, stage: InThreadStage
) -> None:
    symbols = ["AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "META", "GOOGL"]
    bars = with_revisions(walk(symbols, 90), every=37)
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for bar in bars:
            producer.send(BARS, bar)
    expected = reference(bars)

    poll_until(
        lambda: stage.handler is not None and stage.handler.counts["acked"] >= len(bars),
        120,
        "every bar",
        stage.alive,
    )
    got = read_features(provisioned, kafka_bootstrap)
    assert len(got) == len(expected)  # one record per applied bar, none for the repeats
    by_key = {(r.symbol, r.ts, r.revision): r for _, r in got}
    assert by_key.keys() == expected.keys()
    assert all(same(by_key[k], expected[k]) for k in expected)
    # warm-up: nulls until each indicator has enough bars, and bars_seen says how many
    first = by_key[("AAPL", T0, 0)]
    assert first.bars_seen == 1 and first.sma_20 is None and first.rsi_14 is None and first.macd is None
    assert by_key[("AAPL", T0 + timedelta(minutes=60), 0)].macd_signal is not None
    # per-symbol order: offsets of one symbol's records follow its bars
    for sym in symbols:
        mine = sorted((m.partition, m.offset, (r.ts, r.revision)) for m, r in got if r.symbol == sym)
        assert len({p for p, _, _ in mine}) == 1
        assert [k for _, _, k in mine] == sorted(k for _, _, k in mine)
    assert {worker_of(m) for m, _ in got} == {"in-thread"}
    assert stage.handler is not None
    assert stage.handler.counts["duplicates"] == len(bars) - len(expected)
    assert read_dead_letters(provisioned, kafka_bootstrap) == []


def test_duplicates_updates_out_of_order_and_poison_input(
    provisioned: Settings, kafka_bootstrap: str, stage: InThreadStage
) -> None:
    t = [T0 + timedelta(minutes=i) for i in range(5)]

    def bar(minute: int, close: float, revision: int = 0, symbol: str = "AAPL") -> Bar:
        return Bar(symbol, t[minute], close, close, close, close, 100 + minute, revision=revision)

    topic = provisioned.topic(BARS.name)
    schema_headers = [("ops.schema", b"ops.pipeline.Bar"), ("ops.schema.version", b"1")]
    sent = [
        bar(0, 10.0),
        bar(1, 11.0),
        bar(1, 11.0),  # duplicate: ignored
        bar(1, 11.5, revision=1),  # updated bar for the latest minute: replaces it, re-emits
        bar(0, 9.0),  # older minute: out of order
        bar(1, 11.2, revision=0),  # older revision of the latest minute: out of order
        bar(2, float("nan")),  # non-finite close: invalid
        bar(2, 12.0),
    ]
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for b in sent[:4]:
            producer.send(BARS, b)
        producer.send_raw(topic, b"AAPL", b"\x00not avro at all", schema_headers)
        producer.send_raw(topic, b"AAPL", b"no headers", [])
        producer.send(BARS, bar(2, 1.0, symbol="MSFT"), key="AAPL")  # key is not the symbol
        for b in sent[4:]:
            producer.send(BARS, b)
        producer.send(BARS, bar(3, 13.0))  # the stream goes on after all of it

    poll_until(
        lambda: stage.handler is not None and stage.handler.counts["acked"] >= len(sent) + 4,
        120,
        "every bar",
        stage.alive,
    )
    got = read_features(provisioned, kafka_bootstrap)
    keys = [(r.ts, r.revision) for _, r in got]
    assert keys == [(t[0], 0), (t[1], 0), (t[1], 1), (t[2], 0), (t[3], 0)]
    expected = reference([*sent, bar(3, 13.0)])
    assert all(same(r, expected[(r.symbol, r.ts, r.revision)]) for _, r in got)
    updated = got[2][1]
    assert updated.close == 11.5 and updated.bars_seen == 2  # replaced, not appended

    letters = read_dead_letters(provisioned, kafka_bootstrap)
    kinds = sorted(letter.error_type for letter in letters)
    assert kinds == [
        "DecodeError",
        "DecodeError",
        "InvalidBar",
        "InvalidBar",
        "OutOfOrderBar",
        "OutOfOrderBar",
    ]
    assert all(letter.stage == "features" and letter.topic == topic for letter in letters)
    out_of_order = [letter for letter in letters if letter.error_type == "OutOfOrderBar"]
    assert any("older than the last applied minute" in letter.error for letter in out_of_order)
    assert any("revision 0 after revision 1" in letter.error for letter in out_of_order)
    poison = next(letter for letter in letters if letter.value == b"\x00not avro at all")
    assert poison.headers["ops.schema"] == b"ops.pipeline.Bar" and poison.offset is not None
    assert stage.handler is not None
    counts = stage.handler.counts
    assert (counts["duplicates"], counts["out_of_order"], counts["invalid"], counts["undecodable"]) == (
        1,
        2,
        2,
        2,
    )


# The fast writer is this module's own code path, so its byte-for-byte check sits here too.

_opt = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def feature_values(draw: st.DrawFn) -> Features:
    return Features(
        symbol=draw(st.text(min_size=1, max_size=12)),
        ts=draw(
            st.datetimes(
                timezones=st.just(UTC), min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)
            )
        ),
        close=draw(st.floats()),
        sma_20=draw(_opt),
        sma_50=draw(_opt),
        volume_current=draw(st.integers(0, 2**62)),
        volume_avg_20=draw(_opt),
        volume_ratio=draw(_opt),
        volume_surge=draw(st.one_of(st.none(), st.booleans())),
        rsi_14=draw(_opt),
        macd=draw(_opt),
        macd_signal=draw(_opt),
        macd_hist=draw(_opt),
        bb_upper=draw(_opt),
        bb_middle=draw(_opt),
        bb_lower=draw(_opt),
        bars_seen=draw(st.integers(1, 2**31 - 1)),
        revision=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.fixture(scope="module")
def writers() -> tuple[RecordWriter, RegistryCodec, RecordWriter]:
    header = RecordWriter.build(HeaderCodec(), "features.1m", _feature_samples())
    registry_codec = RegistryCodec("mock://features-writer")
    registry = RecordWriter.build(registry_codec, "features.1m", _feature_samples())
    assert header is not None and registry is not None
    assert header.prefix == b"" and registry.prefix[:1] == b"\x00" and len(registry.prefix) == 5
    return header, registry_codec, registry


@settings(max_examples=300, deadline=None)
@given(values=feature_values())
def test_fast_writer_writes_the_codecs_bytes_headers_and_mock_registry(
    writers: tuple[RecordWriter, RegistryCodec, RecordWriter], values: Features
) -> None:
    header, registry_codec, registry = writers
    record = values
    assert (header.encode(values), header.headers) == HeaderCodec().encode("features.1m", record)
    assert registry.encode(values) == registry_codec.encode("features.1m", record)[0]


def test_a_failure_that_is_not_the_events_fault_stops_the_stage_instead_of_skipping(
    provisioned: Settings, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def producer_gone(self: FeaturesHandler, events: Any, ack: Any) -> None:
        raise ConnectionError("the producer is gone")

    monkeypatch.setattr(FeaturesHandler, "handle", producer_gone)
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        producer.send(BARS, walk(["AAPL"], 1)[0])
    s = InThreadStage(provisioned, kafka_bootstrap)
    s.thread.start()
    s.thread.join(120)
    assert not s.thread.is_alive()
    assert [type(e) for e in s.failure] == [ConnectionError]  # run() raises: the CLI exits 1, restarted
