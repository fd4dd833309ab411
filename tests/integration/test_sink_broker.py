"""The sink with the broker's truth: broker.positions and positions share active_positions without
erasing each other's columns, in any arrival order; a qty-0 broker record closes a row; invalid
broker records go to the DLQ; replays of the broker topics change nothing."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import (
    BrokerAccount,
    BrokerPosition,
    DeadLetter,
    EquityPoint,
    OptionQuote,
    Position,
    ReconcileEvent,
    Record,
)
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import (
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    EQUITY,
    OPTION_QUOTES,
    POSITIONS,
    RECONCILE,
    TopicSpec,
)
from tests.integration.test_sink import (
    Sent,
    assert_tables_match,
    checksums,
    minute,
    produce,
    running_sink,
    wait_drained,
)

pytestmark = pytest.mark.integration
SPECS: dict[type[Record], TopicSpec] = {
    Position: POSITIONS, BrokerPosition: BROKER_POSITIONS, BrokerAccount: BROKER_ACCOUNTS,
    OptionQuote: OPTION_QUOTES, EquityPoint: EQUITY, ReconcileEvent: RECONCILE,
}
TOPICS = tuple(t.name for t in SPECS.values())  # the sink reads these only
COLUMNS = ("qty, avg_price, status, opened_at, stop, target, realized_pnl, exit_reason, updated_at, "
           "desk_updated_at, desk_status, origin, asset_class, market_value, unrealized_pl, "
           "current_price, broker_as_of")


def desk(account: str, sym: str, m: int, *, qty: float = 10.0, stop: float | None = 95.0,
         status: str = "OPEN", realized: float = 0.0, reason: str | None = None) -> Position:
    return Position(account, sym, qty, 100.0, minute(0), stop, 110.0 if stop else None, status, realized,
                    minute(m), reason)


def broker(account: str, sym: str, m: int, *, qty: float = 10.0, price: float = 101.0,
           origin: str = "pipeline", asset_class: str = "us_equity") -> BrokerPosition:
    # as_of half a minute into minute m: never equal to a desk record's time
    return BrokerPosition(account, sym, minute(m) + timedelta(seconds=30), asset_class, qty, 100.05,
                          qty * price, qty * 100.05, qty * (price - 100.05), (price - 100.05) / 100.05,
                          price, origin)


def sent(records: list[Record]) -> Sent:
    return [(SPECS[type(r)], r) for r in records]


def rows(conn: psycopg.Connection[Any], account: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT ticker, {COLUMNS} FROM active_positions WHERE account_name = %s ORDER BY ticker", (account,)
    ).fetchall()


def deliver_one_per_batch(settings: Settings, bootstrap: str, url: str, records: list[Record],
                          produced: Counter[str]) -> None:
    with RecordProducer(settings, bootstrap, HeaderCodec()) as producer:
        for r in records:  # every step crosses a transaction
            producer.send(SPECS[type(r)], r)
            producer.flush()
            produced[settings.topic(SPECS[type(r)].name)] += 1
            wait_drained(url, produced)


def test_desk_and_broker_rows_keep_both_sides_in_either_order(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    d, b = desk("a", "AAPL", 2, qty=10.0), broker("a", "AAPL", 3, qty=12.0)  # a manual buy of 2 more
    first_desk = [d, b]
    first_broker = [replace(b, symbol="MSFT"), replace(d, symbol="MSFT")]
    one_batch = [replace(b, symbol="NVDA"), replace(d, symbol="NVDA")]
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05):
        produced = produce(provisioned, kafka_bootstrap, sent(one_batch))
        wait_drained(database_url, produced)
        deliver_one_per_batch(provisioned, kafka_bootstrap, database_url, first_desk + first_broker, produced)
        with psycopg.connect(database_url) as conn:
            got = rows(conn, "a")
        assert [r[0] for r in got] == ["AAPL", "MSFT", "NVDA"]
        assert got[0][1:] == got[1][1:] == got[2][1:], "the arrival order changed a row"
        # the broker's quantity, price and status; the desk's stop, target and opening time
        assert got[0][1:] == (12.0, 100.05, "OPEN", minute(0), 95.0, 110.0, 0.0, None,
                              minute(3) + timedelta(seconds=30), minute(2), "OPEN", "pipeline",
                              "us_equity", 12 * 101.0, pytest.approx(12 * 0.95), 101.0,
                              minute(3) + timedelta(seconds=30))
        # a newer desk record moves the stop, not the broker's columns; an older snapshot is ignored
        later = [desk("a", "AAPL", 5, qty=10.0, stop=97.0), broker("a", "AAPL", 1, qty=1.0, price=50.0)]
        deliver_one_per_batch(provisioned, kafka_bootstrap, database_url, later, produced)
    with psycopg.connect(database_url) as conn:
        aapl = rows(conn, "a")[0]
    assert aapl[1:4] == (12.0, 100.05, "OPEN") and aapl[5] == 97.0 and aapl[14] == 12 * 101.0
    assert aapl[9:11] == (minute(5), minute(5))  # updated_at: the latest record of either side


def test_a_qty_zero_broker_record_closes_the_row(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    call = "QCOM260206C00150000"
    records: list[Record] = [
        desk("a", "AAPL", 2), broker("a", "AAPL", 3), broker("a", "AAPL", 20, qty=0.0, price=90.0),
        broker("a", "AAPL", 10),  # an older snapshot, delivered late: it does not reopen the row
        desk("a", "AAPL", 4, stop=96.0),  # the desk has not seen the close: it does not reopen either
        replace(broker("a", call, 3, qty=2.0, price=4.2, origin="external", asset_class="us_option"),
                underlying="QCOM", expiration="2026-02-06", option_type="call", strike=150.0,
                multiplier=100.0),
        replace(broker("a", call, 9, qty=0.0, price=3.0, origin="external", asset_class="us_option"),
                underlying="QCOM", expiration="2026-02-06", option_type="call", strike=150.0,
                multiplier=100.0),
    ]
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05):
        produced = produce(provisioned, kafka_bootstrap, sent(records[:3]))
        wait_drained(database_url, produced)
        deliver_one_per_batch(provisioned, kafka_bootstrap, database_url, records[3:], produced)
    with psycopg.connect(database_url) as conn:
        aapl, qcom = rows(conn, "a")
        extra = conn.execute("SELECT expiration::text, option_type, strike, multiplier, underlying "
                             "FROM active_positions WHERE ticker = %s", (call,)).fetchone()
    assert aapl[1:4] == (0.0, 100.05, "CLOSED") and aapl[-1] == minute(20) + timedelta(seconds=30)
    assert aapl[5:7] == (96.0, 110.0) and aapl[11] == "OPEN"  # the desk's stop and view are kept
    assert aapl[14] == 0.0 and aapl[15] == 0.0 and aapl[16] == 90.0
    assert qcom[1:5] == (0.0, 100.05, "CLOSED", None)  # no desk record: the broker gives no open time
    assert qcom[12:14] == ("external", "us_option") and qcom[10:12] == (None, None)
    assert extra == ("2026-02-06", "call", 150.0, 100.0, "QCOM")


def test_the_same_facts_in_any_order_leave_the_same_row(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    def facts(account: str) -> list[Record]:
        return [desk(account, "AAPL", 1), broker(account, "AAPL", 2), desk(account, "AAPL", 5, stop=97.0),
                broker(account, "AAPL", 6, price=104.0), broker(account, "AAPL", 8, qty=0.0, price=96.0),
                desk(account, "AAPL", 9, qty=0.0, stop=None, status="CLOSED", realized=-40.0,
                     reason="stop"),
                desk(account, "AAPL", 9, qty=10.0, stop=97.0),  # the same instant: CLOSED wins
                broker(account, "AAPL", 4, price=99.0)]
    shuffled = facts("shuffled")
    random.Random(14).shuffle(shuffled)
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05):
        produced = produce(provisioned, kafka_bootstrap, sent(facts("one-batch") + shuffled))
        wait_drained(database_url, produced)
        deliver_one_per_batch(provisioned, kafka_bootstrap, database_url, facts("forward"), produced)
        deliver_one_per_batch(provisioned, kafka_bootstrap, database_url, facts("reverse")[::-1], produced)
    with psycopg.connect(database_url) as conn:
        found = {a: rows(conn, a) for a in ("forward", "reverse", "one-batch", "shuffled")}
    assert found["forward"] == found["reverse"] == found["one-batch"] == found["shuffled"]
    (row,) = found["forward"]
    assert row[1:4] == (0.0, 100.05, "CLOSED")  # the broker's close at 08:30 of minute 8
    assert row[5:9] == (None, None, -40.0, "stop")  # the desk's close at minute 9
    assert row[9:12] == (minute(9), minute(9), "CLOSED")
    assert row[14] == 0.0 and row[-1] == minute(8) + timedelta(seconds=30)


def test_invalid_broker_records_go_to_the_dlq_and_the_sink_goes_on(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    bad = [broker("a", "ES", 1, asset_class="us_future"), broker("a", "AAPL", 1, origin="manual"),
           replace(broker("a", "QCOM260206C00150000", 1, asset_class="us_option"), expiration="06/02/26")]
    good = broker("a", "MSFT", 2)
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05) as sink:
        produced = produce(provisioned, kafka_bootstrap, sent([*bad, good]))
        wait_drained(database_url, produced, running=sink)
    assert sink.stats.dead_letters == 3  # once stopped: the stats follow the stored offsets
    with psycopg.connect(database_url) as conn:
        dead = conn.execute("SELECT error_type, error FROM dead_letters ORDER BY error").fetchall()
        assert [r[0] for r in rows(conn, "a")] == ["MSFT"]
    assert {t for t, _ in dead} == {"InvalidRecord"}
    assert [e for _, e in dead] == [
        "asset_class 'us_future' is not one of ['crypto', 'us_equity', 'us_option']",
        "expiration '06/02/26' is not an ISO date",
        "origin 'manual' is not one of ['external', 'pipeline']",
    ]
    letters = [r for _, r in read_records(provisioned, kafka_bootstrap, HeaderCodec(), BROKER_POSITIONS.dlq,
                                          quiet_s=0.3)]
    assert all(isinstance(d, DeadLetter) for d in letters)
    assert sorted(d.error for d in letters if isinstance(d, DeadLetter)) == [e for _, e in dead]
    assert all(isinstance(d, DeadLetter) and d.stage == "sink" and d.topic == provisioned.topic(
        BROKER_POSITIONS.name) for d in letters)


def test_replaying_the_broker_topics_changes_no_checksum(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    records: list[Record] = []
    for m in range(0, 30, 3):
        for account in ("large-100k", "tiny-1k"):
            records += [
                BrokerAccount(account, minute(m), "ACTIVE", "USD", 1000.0 + m, 2000.0, None, 1100.0 + m,
                              1090.0, 100.0, 0.0, None, False, [], "poll"),
                broker(account, "AAPL", m, qty=float(m % 4)), desk(account, "AAPL", m + 1),
                EquityPoint(account, minute(m), 1100.0 + m, 1000.0 + m, 0.0, float(m), 1, "broker"),
                ReconcileEvent(account, minute(m), minute(m), "cash_drift", None, "1000", "1001", "none", ""),
                ReconcileEvent(account, minute(m), minute(m), "quantity", "AAPL", "1", "2", "adopted", ""),
            ]
        records.append(OptionQuote("QCOM260206C00150000", "QCOM", minute(m), 4.1, 4.3, 1.0, 2.0, None,
                                   0.3, 0.5, None, None, None, "quote", minute(m)))
    tables = ("active_positions", "broker_accounts", "option_quotes", "account_equity", "reconcile_events")
    produced = produce(provisioned, kafka_bootstrap, sent(records))
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05):
        wait_drained(database_url, produced)
        with psycopg.connect(database_url) as conn:
            assert_tables_match(conn, sent(records))
            before = checksums(conn, tables)
        produced += produce(provisioned, kafka_bootstrap, sent(records))  # delivered again
        wait_drained(database_url, produced)
    with psycopg.connect(database_url) as conn:
        assert checksums(conn, tables) == before
        conn.execute("DELETE FROM sink_offsets")  # and read again from the start
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05):
        wait_drained(database_url, produced)
    with psycopg.connect(database_url) as conn:
        assert checksums(conn, tables) == before
        assert conn.execute("SELECT count(*) FROM reconcile_events WHERE symbol IS NULL").fetchone() == (20,)


def test_option_chain_rows_keep_their_terms_and_bad_ones_go_to_the_dlq(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    """options.quotes v2: a chain snapshot's terms land in option_quotes; a quote of an unknown type
    or a negative open interest is a dead letter, and the rows after it still land."""
    base = OptionQuote("QCOM260206C00150000", "QCOM", minute(1), 4.1, 4.3, 1.0, 2.0, None, 0.3, 0.52, 0.04,
                       -0.05, 0.12, "snapshot", minute(1), expiration="2026-02-06", strike=150.0,
                       option_type="call", open_interest=1200, penny_program=True, underlying_price=151.2,
                       chain_id="QCOM@1", chain_as_of=minute(1), modelled=False)
    put = replace(base, contract="QCOM260206P00150000", option_type="put", delta=-0.48, open_interest=900)
    modelled = replace(base, as_of=minute(2), chain_id="QCOM@2", chain_as_of=minute(2), open_interest=None,
                       source="model", modelled=True)
    bad = [replace(base, as_of=minute(3), option_type="straddle"), replace(base, as_of=minute(4), open_interest=-5)]
    with running_sink(provisioned, kafka_bootstrap, database_url, topics=TOPICS, max_latency_s=0.05) as sink:
        produced = produce(provisioned, kafka_bootstrap, sent([base, *bad, put, modelled]))
        wait_drained(database_url, produced, running=sink)
    with psycopg.connect(database_url) as conn:
        got = conn.execute(
            "SELECT contract, as_of, expiration, strike, option_type, open_interest, penny_program, "
            "underlying_price, chain_id, chain_as_of, modelled FROM option_quotes ORDER BY as_of, contract"
        ).fetchall()
        dead = [r[0] for r in conn.execute("SELECT error FROM dead_letters ORDER BY error").fetchall()]
    assert [(r[0][4:], r[1], r[4], r[5], r[8], r[10]) for r in got] == [
        ("260206C00150000", minute(1), "call", 1200, "QCOM@1", False),
        ("260206P00150000", minute(1), "put", 900, "QCOM@1", False),
        ("260206C00150000", minute(2), "call", None, "QCOM@2", True),
    ]
    assert got[0][2].isoformat() == "2026-02-06" and got[0][3] == 150.0 and got[0][6] is True
    assert got[0][7] == 151.2 and got[0][9] == minute(1)
    assert dead == ["open_interest -5 is negative", "option_type 'straddle' is not call or put"]
