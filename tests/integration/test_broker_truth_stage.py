"""The dispatch stage on the broker's truth, against the real broker and the fake Alpaca: two
accounts on their own keys, external positions watched and exited, a bracket stop that filled
while the stage was down reconciled after its restart, a manual sale adopted, and entries that fail
closed when Alpaca cannot be read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsinfra.settings import Settings
from schemas.records import BrokerAccount, BrokerPosition, Execution, Recommendation, ReconcileEvent
from schemas.topic_io import RecordProducer
from schemas.topics import BROKER_ACCOUNTS, BROKER_POSITIONS, EXECUTIONS, RECONCILE, SIGNALS
from tests.fakes.alpaca_trading import FakeAlpacaTrading
from tests.integration.clock_helpers import close_minute
from tests.integration.test_trading_helpers import read
from trading.calendar import TradingCalendar
from trading.execution import client_order_id, exit_reason_of
from trading.gates import AccountConfig
from trading.signals import recommendation_id

pytestmark = pytest.mark.integration

CAL = TradingCalendar()


class OffsetClock:
    """Wall time moved to a chosen session minute: the desks decide as if it were then."""

    def __init__(self, start: datetime) -> None:
        self._offset = start - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset


def _session_day() -> date:
    """A past regular session a few days back (the test must not depend on today's market)."""
    day = datetime.now(UTC).date() - timedelta(days=3)
    while CAL.session(day) is None:
        day -= timedelta(days=1)
    return day


def _next_session(day: date) -> date:
    nxt = day + timedelta(days=1)
    while CAL.session(nxt) is None:
        nxt += timedelta(days=1)
    return nxt


@pytest.fixture
def fake() -> Iterator[FakeAlpacaTrading]:
    server = FakeAlpacaTrading(prices={"AAPL": 100.0, "MSFT": 200.0}).start()
    yield server
    server.stop()


def _account(tmp_path: Path, name: str, key: str, secret: str, **kw: Any) -> AccountConfig:
    creds = tmp_path / f"{name}.env"
    creds.write_text(f"APCA_API_KEY_ID={key}\nAPCA_API_SECRET_KEY={secret}\n")
    return AccountConfig(name=name, mode="alpaca-paper", min_confidence=0.5, credentials_file=str(creds), **kw)


def _run(settings: Settings, bootstrap: str, fake: FakeAlpacaTrading, accounts: tuple[AccountConfig, ...],
         clock: OffsetClock) -> tuple[threading.Event, threading.Thread]:
    from opsinfra.endpoints import Endpoints
    from streams import dispatch_agent
    from streams.app import PipelineApp, create_app, run_app

    endpoints = Endpoints(bootstrap, "", None, embedded=False)
    config = dispatch_agent.DispatchConfig(accounts=accounts, clock="wall", alpaca_url=fake.url,
                                           alpaca_stream_url=fake.stream_url, alpaca_data_url=fake.url,
                                           snapshot_every_s=1.0, quotes_every_s=1.0, reconcile_every_s=1.0,
                                           max_hold_s=1.0)  # no minute closures upstream: a short hold

    def register(p: PipelineApp) -> None:
        dispatch_agent.register(p, endpoints=endpoints, config=config, clock=clock)  # type: ignore[arg-type]

    stop = threading.Event()

    def stage() -> None:
        papp = create_app(settings, endpoints, app_id=dispatch_agent.APP_ID, broker_commit_interval=0.5,
                          agents=[register])
        run_app(papp, stop)

    thread = threading.Thread(target=stage, name="dispatch", daemon=True)
    thread.start()
    return stop, thread


def _stop(handle: tuple[threading.Event, threading.Thread]) -> None:
    handle[0].set()
    handle[1].join(60)


def _wait(what: str, cond: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _of(settings: Settings, bootstrap: str, spec: Any, kind: type) -> list[Any]:
    return [r for r in read(settings, bootstrap, spec) if isinstance(r, kind)]


def test_two_accounts_their_own_keys_external_option_exits_and_secrets_out_of_logs(
    provisioned: Settings, kafka_bootstrap: str, fake: FakeAlpacaTrading, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    day = _session_day()
    clock = OffsetClock(CAL.session(day).open + timedelta(hours=2))  # type: ignore[union-attr]
    fake.add_account("key-large", "secret-large", cash=121_000.0, buying_power=242_000.0)
    fake.add_account("key-tiny", "secret-tiny", cash=1_000.0, buying_power=1_000.0)
    qcom = f"QCOM{date(2027, 1, 15):%y%m%d}C00150000"
    fake.set_position(qcom, 2, 3.0, key=("key-large", "secret-large"), current_price=1.2)  # -60 %
    expiring = f"SPY{_next_session(day):%y%m%d}P00500000"
    fake.set_position(expiring, 1, 2.0, key=("key-tiny", "secret-tiny"), current_price=2.1)
    fake.set_position("AAPL", 5, 90.0, key=("key-tiny", "secret-tiny"), current_price=100.0)
    large = _account(tmp_path, "large-100k", "key-large", "secret-large", manage_external="exit")
    tiny = _account(tmp_path, "tiny-1k", "key-tiny", "secret-tiny", manage_external="exit",
                    starting_cash=1_000.0, notional_per_trade=250.0)
    handle = _run(provisioned, kafka_bootstrap, fake, (large, tiny), clock)
    try:
        exits = _wait("two external exits filled", lambda: [
            e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution)
            if e.intent == "external_exit" and e.status == "FILLED"] if len([
                e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution)
                if e.intent == "external_exit" and e.status == "FILLED"]) >= 2 else None)
        by_account = {e.account: e for e in exits}
        assert by_account["large-100k"].symbol == qcom and exit_reason_of(by_account["large-100k"]) == "stop_loss"
        assert by_account["tiny-1k"].symbol == expiring
        assert exit_reason_of(by_account["tiny-1k"]) == "option_expiry"
        # each order went to its own account, once
        assert len(fake.account(("key-large", "secret-large")).by_client_id) == 1
        assert len(fake.account(("key-tiny", "secret-tiny")).by_client_id) == 1
        accounts = _of(provisioned, kafka_bootstrap, BROKER_ACCOUNTS, BrokerAccount)
        cash = {a.account: a.cash for a in accounts if a.trigger == "start"}
        assert cash["large-100k"] == 121_000.0 and cash["tiny-1k"] == 1_000.0
        closed = _wait("the call published closed", lambda: [
            p for p in _of(provisioned, kafka_bootstrap, BROKER_POSITIONS, BrokerPosition)
            if p.symbol == qcom and p.qty == 0])
        assert closed[0].origin == "external" and closed[0].multiplier == 100.0
        # the AAPL position is external and within its limits: watched, never traded
        assert not [e for e in exits if e.symbol == "AAPL"]
        events = _of(provisioned, kafka_bootstrap, RECONCILE, ReconcileEvent)
        assert {(ev.account, ev.kind, ev.symbol) for ev in events} >= {
            ("large-100k", "unknown_position", qcom), ("tiny-1k", "unknown_position", "AAPL")}
    finally:
        _stop(handle)
    text = caplog.text
    for secret in ("secret-large", "secret-tiny", "key-large", "key-tiny"):
        assert secret not in text


def rec(symbol: str, ts: datetime, close: float) -> Recommendation:
    return Recommendation(recommendation_id("bt", symbol, ts, "BUY"), symbol, ts, "BUY", 0.9, 1.0, 0.9, None,
                          "test", {"close": close}, "bt")


def test_bracket_stop_filled_while_down_and_a_manual_sale_are_adopted_never_ordered(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer, fake: FakeAlpacaTrading,
    tmp_path: Path,
) -> None:
    day = _session_day()
    start = CAL.session(day).open + timedelta(hours=2, seconds=40)  # type: ignore[union-attr]
    clock = OffsetClock(start)
    key = ("key-p", "secret-p")
    fake.add_account(*key, cash=50_000.0, buying_power=50_000.0)
    paper = _account(tmp_path, "paper", *key, protective_orders="bracket", max_broker_state_age_s=5.0)
    handle = _run(provisioned, kafka_bootstrap, fake, (paper,), clock)
    minute = start.replace(second=0)
    try:
        _wait("a first snapshot", lambda: _of(provisioned, kafka_bootstrap, BROKER_ACCOUNTS, BrokerAccount))
        entries = [rec("AAPL", minute, 100.0), rec("MSFT", minute, 200.0)]
        for r in entries:
            produce.send(SIGNALS, r)
        produce.flush()
        close_minute(provisioned, kafka_bootstrap, minute, at=clock.now())  # as the signal agent would
        filled = _wait("both entries filled", lambda: [
            e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution)
            if e.intent == "entry" and e.status == "FILLED"] if len([
                e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution)
                if e.intent == "entry" and e.status == "FILLED"]) == 2 else None)
        aapl = next(e for e in filled if e.symbol == "AAPL")
        parent = fake.account(key).by_client_id[client_order_id("paper", aapl.recommendation_id)]
        assert parent.data["order_class"] == "bracket" and len(parent.legs) == 2
    finally:
        _stop(handle)
    # while the stage is down: the bracket's stop fills at Alpaca; someone sells MSFT by hand
    fake.trigger_stop(client_order_id("paper", aapl.recommendation_id), price=98.0, key=key)
    fake.manual_trade("MSFT", -(next(e for e in filled if e.symbol == "MSFT").qty or 0), 205.0, key=key)
    posts_before = len(fake.account(key).by_client_id)
    handle = _run(provisioned, kafka_bootstrap, fake, (paper,), clock)
    try:
        adopted = _wait("both closes adopted", lambda: [
            e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution)
            if exit_reason_of(e) == "closed_at_broker"] if len([
                e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution)
                if exit_reason_of(e) == "closed_at_broker"]) == 2 else None)
        prices = {e.symbol: e.price for e in adopted}
        assert prices == {"AAPL": 98.0, "MSFT": 205.0}
        assert all(e.status == "FILLED" and e.client_order_id is None for e in adopted)
        events = _of(provisioned, kafka_bootstrap, RECONCILE, ReconcileEvent)
        assert {(ev.kind, ev.symbol, ev.action) for ev in events} >= {
            ("closed_at_broker", "AAPL", "adopted"), ("closed_at_broker", "MSFT", "adopted")}
        time.sleep(2.0)
        assert len(fake.account(key).by_client_id) == posts_before  # nothing ordered to "fix" it
        # Alpaca unreachable: snapshots stop, and an entry fails closed naming the stale state
        fake.stop()
        late = minute + timedelta(minutes=1)
        clock_late = late + timedelta(seconds=50)
        clock._offset = clock_late - datetime.now(UTC)
        time.sleep(6.0)  # past max_broker_state_age_s since the last snapshot
        produce.send(SIGNALS, rec("NVDA", late, 120.0))
        produce.flush()
        close_minute(provisioned, kafka_bootstrap, late, at=clock.now())
        skipped = _wait("the NVDA entry skipped", lambda: [
            e for e in _of(provisioned, kafka_bootstrap, EXECUTIONS, Execution) if e.symbol == "NVDA"])
        assert skipped[0].status == "SKIPPED"
        assert skipped[0].failure_reason is not None
        assert skipped[0].failure_reason.startswith("broker_state: stale broker state")
    finally:
        _stop(handle)
