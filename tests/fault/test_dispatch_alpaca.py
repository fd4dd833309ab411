"""The dispatch stage in alpaca-paper mode against the fake trading API: kill -9 between an order's
POST and its answer, then a restart, leaves exactly one order and a resolved execution; a burst of
500 signals respects the submit-rate gate; the kill switch holds across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from opsinfra.settings import Settings
from schemas.records import Execution, Recommendation
from schemas.topic_io import RecordProducer
from schemas.topics import EXECUTIONS, SIGNALS
from streams import dispatch_agent
from tests.fakes.alpaca_trading import FakeAlpacaTrading, FakeOrder
from tests.integration.clock_helpers import close_minute
from tests.integration.test_trading_helpers import OPEN, dispatch_stage, read, run_until
from trading.execution import client_order_id
from trading.gates import AccountConfig
from trading.signals import recommendation_id

pytestmark = [pytest.mark.fault, pytest.mark.integration]

# order idempotency under faults, on the local book (broker truth has its own tests)
PAPER = AccountConfig(name="paper", mode="alpaca-paper", min_confidence=0.5, broker_truth=False)

RUNNER = """
import json, logging, signal, sys, threading
from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from streams import dispatch_agent
from trading.accounts import parse_accounts

args = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
settings = Settings(_env_file=None, kafka_bootstrap_servers=args["bootstrap"],
                    pipeline_topic_prefix=args["prefix"], apca_api_key_id="key",
                    apca_api_secret_key="secret", schema_registry_url=None)
config = dispatch_agent.DispatchConfig(
    accounts=parse_accounts(args["accounts"]), clock="bar", alpaca_url=args["url"],
    alpaca_stream_url=args["stream_url"], alpaca_data_url=args["url"], reconcile_every_s=1.0,
    snapshot_every_s=1.0, max_hold_s=2.0)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
dispatch_agent.run(settings, Endpoints(args["bootstrap"], "", None, False), stop, config=config)
"""


def rec(symbol: str, minute: int = 30, action: str = "BUY", close: float = 100.0) -> Recommendation:
    ts = OPEN + timedelta(minutes=minute)
    return Recommendation(
        id=recommendation_id("t", symbol, ts, action), symbol=symbol, ts=ts, action=action,
        base_confidence=0.9, volume_multiplier=1.0, confidence=0.9, sentiment=None, reason="test",
        features={"close": close}, strategy_version="t",
    )


@pytest.fixture
def fake() -> Iterator[FakeAlpacaTrading]:
    server = FakeAlpacaTrading(prices={"AAPL": 101.5}).start()
    yield server
    server.stop()


def executions(settings: Settings, bootstrap: str) -> list[Execution]:
    return [e for e in read(settings, bootstrap, EXECUTIONS) if isinstance(e, Execution)]


def spawn(settings: Settings, bootstrap: str, fake: FakeAlpacaTrading, account: AccountConfig,
          log: Path) -> subprocess.Popen[bytes]:
    args = {"bootstrap": bootstrap, "prefix": settings.pipeline_topic_prefix, "url": fake.url,
            "stream_url": fake.stream_url, "accounts": [account.to_dict()]}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], cwd=Path.cwd(),
                                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))


def test_kill_9_between_the_post_and_its_record_then_restart_gives_exactly_one_order(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer, fake: FakeAlpacaTrading,
    tmp_path: Path
) -> None:
    r = rec("AAPL")
    coid = client_order_id(PAPER.name, r.id)
    produce.send(SIGNALS, r)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, r.ts)  # what the signal agent would say
    log = tmp_path / "dispatch.log"
    proc: subprocess.Popen[bytes] | None = None

    def kill_before_answering(order: FakeOrder) -> None:
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)  # the order exists; the dispatcher never hears of it
        proc.wait(10)

    fake.on_order = kill_before_answering
    proc = spawn(provisioned, kafka_bootstrap, fake, PAPER, log)
    try:
        assert proc.wait(120) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    fake.on_order = None
    assert len(fake.orders_for(coid)) == 1
    (before,) = executions(provisioned, kafka_bootstrap)
    assert before.status == "SUBMITTED" and before.broker_order_id is None  # the write-ahead record
    assert before.client_order_id == coid

    proc = spawn(provisioned, kafka_bootstrap, fake, PAPER, log)
    try:
        deadline = time.monotonic() + 120
        while not any(e.status == "FILLED" for e in executions(provisioned, kafka_bootstrap)):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert fake.post_attempts == [coid]  # the restart looked the order up, it did not POST again
    assert len(fake.orders) == 1
    final = [e for e in executions(provisioned, kafka_bootstrap) if e.status != "SUBMITTED"]
    assert len(final) == 1
    filled = final[0]
    assert filled.status == "FILLED" and filled.recommendation_id == r.id
    assert filled.broker_order_id == fake.by_client_id[coid].data["id"]
    assert filled.price == 101.5 and filled.qty == before.qty


def _stage(settings: Settings, bootstrap: str, fake: FakeAlpacaTrading, account: AccountConfig):
    config = dispatch_agent.DispatchConfig(accounts=(account,), clock="bar", alpaca_url=fake.url,
                                           alpaca_stream_url=fake.stream_url, trade_updates=False,
                                           reconcile_every_s=1.0)
    from pydantic import SecretStr

    settings = settings.model_copy(update={"apca_api_key_id": SecretStr("key"),
                                           "apca_api_secret_key": SecretStr("secret")})

    return dispatch_stage(settings, bootstrap, config)


def test_a_burst_of_500_signals_respects_the_submit_rate_gate(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer, fake: FakeAlpacaTrading
) -> None:
    fake.fill = "hold"
    account = replace(PAPER, name="burst", starting_cash=1e9, notional_per_trade=1_000.0,
                      max_trades_per_day=1_000, max_open_positions=1_000, max_notional_account=1e9,
                      max_submits=10, submit_window_s=60.0)
    recs = [rec(f"S{i:03d}") for i in range(500)]
    fake.assets.update(r.symbol for r in recs)  # tradable at the (strict) fake
    for r in recs:
        produce.send(SIGNALS, r)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, recs[0].ts)
    stage = _stage(provisioned, kafka_bootstrap, fake, account)
    run_until(stage,
              lambda: len({e.recommendation_id for e in executions(provisioned, kafka_bootstrap)}) >= 500)
    got = executions(provisioned, kafka_bootstrap)
    decisions = {e.recommendation_id: e for e in got if e.broker_order_id is None}
    assert len(decisions) == 500
    sent = [e for e in decisions.values() if e.status != "SKIPPED"]
    skipped = [e for e in decisions.values() if e.status == "SKIPPED"]
    assert len(sent) == 10 and len(skipped) == 490
    assert all(e.failure_reason == "submit_rate: submit rate limit reached" for e in skipped)
    gate = next(g for g in skipped[0].gates if g.name == "submit_rate")
    assert gate.value == 10.0 and gate.limit == 10.0
    assert len(fake.post_attempts) == 10 and len(set(fake.post_attempts)) == 10
    assert {e.client_order_id for e in sent} == set(fake.post_attempts)


def test_kill_switch_holds_across_a_restart_in_alpaca_mode(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer, fake: FakeAlpacaTrading
) -> None:
    account = replace(PAPER, name="paper-kill", notional_per_trade=1_000.0, daily_loss_limit=50.0)
    fake.prices = {"AAPL": 100.0}
    stage = _stage(provisioned, kafka_bootstrap, fake, account)
    buy = rec("AAPL", 30)
    produce.send(SIGNALS, buy)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, buy.ts)
    # entry FILLED at 100 (found by the reconcile pass, no trade-updates stream here)
    run_until(stage, lambda: any(e.status == "FILLED" for e in executions(provisioned, kafka_bootstrap)))
    fake.prices = {"AAPL": 90.0}
    sell = rec("AAPL", 35, "SELL", 90.0)  # a reversal: exit 10 shares at 90 -> -100
    produce.send(SIGNALS, sell)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, sell.ts)
    run_until(stage, lambda: sum(e.status == "FILLED" for e in executions(provisioned, kafka_bootstrap)) >= 2)
    later = rec("MSFT", 40)
    produce.send(SIGNALS, later)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, later.ts)
    run_until(stage, lambda: any(e.recommendation_id == later.id
                                 for e in executions(provisioned, kafka_bootstrap)))
    blocked = next(e for e in executions(provisioned, kafka_bootstrap) if e.recommendation_id == later.id)
    assert blocked.status == "SKIPPED"
    assert blocked.failure_reason == "daily_loss: kill switch on: daily loss limit hit"
    assert len(fake.orders) == 2  # the entry and the exit, nothing for MSFT


def test_kill_9_mid_external_exit_then_restart_gives_exactly_one_order(
    provisioned: Settings, kafka_bootstrap: str, fake: FakeAlpacaTrading, tmp_path: Path
) -> None:
    """Broker truth: the desk decides to exit an external QCOM call at its stop, the order reaches
    Alpaca, the stage is killed before it hears back; after the restart the written-ahead exit is
    resolved by client_order_id (never POSTed again) and the next snapshot shows the call closed."""
    from schemas.records import BrokerPosition
    from schemas.topics import BROKER_POSITIONS

    contract = "QCOM270115C00150000"
    fake.set_position(contract, 2, 3.0, current_price=1.2)  # -60 %: past the -50 % stop
    account = AccountConfig(name="paper-ext", mode="alpaca-paper", manage_external="exit")
    log = tmp_path / "dispatch.log"
    proc: subprocess.Popen[bytes] | None = None

    def kill_before_answering(order: FakeOrder) -> None:
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    fake.on_order = kill_before_answering
    proc = spawn(provisioned, kafka_bootstrap, fake, account, log)
    try:
        assert proc.wait(120) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    fake.on_order = None
    (written,) = [e for e in executions(provisioned, kafka_bootstrap) if e.intent == "external_exit"]
    assert written.status == "SUBMITTED" and written.symbol == contract and written.broker_order_id is None
    coid = written.client_order_id or ""
    assert len(fake.orders_for(coid)) == 1

    proc = spawn(provisioned, kafka_bootstrap, fake, account, log)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in read(provisioned, kafka_bootstrap, BROKER_POSITIONS)
                   if isinstance(p, BrokerPosition) and p.symbol == contract and p.qty == 0]:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2.0)  # a few more snapshots: nothing may be ordered again
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert fake.post_attempts == [coid]  # one POST: the restart looked it up
    exits = [e for e in executions(provisioned, kafka_bootstrap) if e.intent == "external_exit"]
    assert {e.recommendation_id for e in exits} == {written.recommendation_id}
    assert [e.status for e in exits if e.status != "SUBMITTED"] == ["FILLED"]
