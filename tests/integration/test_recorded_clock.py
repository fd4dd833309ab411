"""Live on the wall clock, then `backtest --clock recorded` over the topics: the same decisions, the
skip a late bar caused included. The features, signal and dispatch stages run on a clock whose
minutes are the bars' minutes (60 times as fast as the wall), a minute of bars as each one ends;
one symbol's bars are held back past the deadline of their minute, so its signal is decided late
(and fails the bar-age gate) where an on-time run enters the trade."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from pipeline.recorded_backtest import read_recorded
from schemas.codec import HeaderCodec
from schemas.records import Bar, Execution, MinuteClosed
from schemas.topic_io import RecordProducer
from schemas.topics import BARS, CLOCK, EXECUTIONS, FEATURES, SIGNALS, SYMBOL_PARTITIONS
from streams import dispatch_agent, features_agent, signal_agent
from streams.app import PipelineApp, create_app, run_app
from tests.integration.test_trading_helpers import OPEN, caught_up, read
from trading.backtest import Backtester
from trading.calendar import TradingCalendar
from trading.gates import LARGE_100K
from trading.recorded_clock import replay_recorded
from trading.watermarks import CloserConfig

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA")
ACCOUNT = replace(LARGE_100K, name="recorded", min_confidence=0.0, allow_short=True)
SPEED = 60.0  # clock seconds per wall second
WARM = 50  # minutes sent at once before the paced ones
MINUTES = 70
LATE = ("TSLA", 59)  # 14:29: entered on time, skipped (bar age) when late


def session_bars(minutes: int, seed: int = 5) -> list[Bar]:
    rnd = random.Random(seed)
    price = dict.fromkeys(SYMBOLS, 100.0)
    out = []
    for m in range(minutes):
        ts = OPEN + timedelta(minutes=m)
        for i, s in enumerate(SYMBOLS):
            price[s] *= math.exp(0.0015 * math.sin((m + 29 * i) / 40.0) + rnd.gauss(0, 0.002))
            p = price[s]
            out.append(Bar(s, ts, p, p, p, p, int(rnd.lognormvariate(7, 0.6)), 10, p, "live", 0))
    return out


class PacedClock:
    """Bar time running SPEED times as fast as the wall, from `start`."""

    def __init__(self, start: datetime) -> None:
        self.start, self.t0 = start, time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.t0) * SPEED)


def _stages(settings: Settings, bootstrap: str, clock: PacedClock) -> list[Callable[[threading.Event], None]]:
    endpoints = Endpoints(bootstrap, "", None, embedded=False)
    closer = CloserConfig(clock="wall", allowance_s=20.0)
    registrars: list[tuple[str, Callable[[PipelineApp], object]]] = [
        (features_agent.APP_ID, lambda p: features_agent.register(
            p, config=features_agent.FeaturesConfig(symbols=SYMBOLS, closer=closer), clock=clock)),
        (signal_agent.APP_ID, lambda p: signal_agent.register(p, endpoints=endpoints, clock=clock)),
        (dispatch_agent.APP_ID, lambda p: dispatch_agent.register(
            p, endpoints=endpoints, config=dispatch_agent.DispatchConfig(accounts=(ACCOUNT,), clock="wall"),
            clock=clock)),
    ]

    def stage(app_id: str, register: Callable[[PipelineApp], object]) -> Callable[[threading.Event], None]:
        def run(stop: threading.Event) -> None:
            run_app(create_app(settings, endpoints, app_id=app_id, broker_commit_interval=0.5,
                               agents=[register]), stop)
        return run

    return [stage(a, r) for a, r in registrars]


def _closed_everywhere(settings: Settings, bootstrap: str, minute: datetime) -> bool:
    got = [r for r in read(settings, bootstrap, CLOCK)
           if isinstance(r, MinuteClosed) and r.stage == "signals"]
    return all(any(r.partition == p and r.minute >= minute for r in got) for p in range(SYMBOL_PARTITIONS))


def _wait(cond: Callable[[], bool], failures: list[BaseException], what: str, deadline_s: float = 180.0
          ) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        assert not failures, failures
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.3)


def test_recorded_clock_replays_a_live_run_with_a_late_bar(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer, tmp_path: Path
) -> None:
    bars = session_bars(MINUTES)
    on_time = Backtester([ACCOUNT], TradingCalendar()).run(bars).executions
    late_ts = OPEN + timedelta(minutes=LATE[1])
    planned = [e for e in on_time if e.symbol == LATE[0] and e.bar_used_ts == late_ts]
    assert [e.status for e in planned] == ["SIMULATED"]  # on time, the trade is entered

    clock = PacedClock(OPEN + timedelta(minutes=WARM))
    stop = threading.Event()
    failures: list[BaseException] = []

    def guard(run: Callable[[threading.Event], None]) -> Callable[[], None]:
        def target() -> None:
            try:
                run(stop)
            except BaseException as exc:  # surfaced by _wait
                failures.append(exc)
        return target

    runs = _stages(provisioned, kafka_bootstrap, clock)
    threads = [threading.Thread(target=guard(s), daemon=True) for s in runs]
    for t in threads:
        t.start()
    held: list[Bar] = []
    try:
        by_minute: dict[int, list[Bar]] = {}
        for b in bars:
            by_minute.setdefault(int((b.ts - OPEN).total_seconds() // 60), []).append(b)
        for m in range(MINUTES):
            if m >= WARM:  # a minute's bars as it ends on the clock
                while clock.now() < OPEN + timedelta(minutes=m + 1):
                    time.sleep(0.02)
            for b in by_minute[m]:
                if b.symbol == LATE[0] and LATE[1] <= m < LATE[1] + 5:
                    held.append(b)
                else:
                    produce.send(BARS, b)
            produce.flush()
            if m == LATE[1] + 4:  # the held bars go out once dispatch has moved 3 minutes past them
                past = late_ts + timedelta(minutes=3)
                _wait(lambda: _closed_everywhere(provisioned, kafka_bootstrap, past),  # noqa: B023
                      failures,
                      "the minutes after the held bars to close")
                for b in held:
                    produce.send(BARS, b)
                produce.flush()
        last = OPEN + timedelta(minutes=MINUTES - 1)
        _wait(lambda: _closed_everywhere(provisioned, kafka_bootstrap, last), failures,
              "the last minute to close")
        group = provisioned.pipeline_topic_prefix + dispatch_agent.APP_ID
        _wait(caught_up(provisioned, kafka_bootstrap, group, FEATURES, SIGNALS), failures,
              "dispatch to drain")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures

    live = [e for e in read(provisioned, kafka_bootstrap, EXECUTIONS) if isinstance(e, Execution)]
    late = [e for e in live if e.symbol == LATE[0] and e.bar_used_ts == late_ts]
    assert [e.status for e in late] == ["SKIPPED"], late
    assert (late[0].failure_reason or "").startswith("bar_age"), late[0].failure_reason
    assert late[0].decided_at - late_ts > timedelta(minutes=3)

    out = tmp_path / "recorded"
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps([{"name": ACCOUNT.name, "min_confidence": 0.0, "allow_short": True}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
    prefix = provisioned.pipeline_topic_prefix
    env.update(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, PIPELINE_TOPIC_PREFIX=prefix,
               PIPELINE_DATA_DIR=str(tmp_path / "data"), PYTHONWARNINGS="ignore", COLUMNS="160")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "backtest", "--clock", "recorded", "--out",
                           str(out), "--accounts", str(accounts)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    replayed = replay_recorded([ACCOUNT], TradingCalendar(),
                               read_recorded(provisioned, kafka_bootstrap, HeaderCodec()),
                               partitions=SYMBOL_PARTITIONS).executions
    assert len(live) >= 3
    assert sorted(replayed, key=_order) == sorted(live, key=_order)
    assert (out / "executions.csv").read_text().count("\n") == len(live) + 1


def _order(e: Execution) -> Any:
    return (e.decided_at, e.recommendation_id, e.account)
