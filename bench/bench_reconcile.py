"""What one reconcile pass costs: 2 accounts x 30 positions (equities and options) read from the
fake Alpaca through alpaca-py (REST calls and wall time per pass), then folded by the desks (time
per snapshot). Prints figures; run: PYTHONPATH=. .venv/bin/python bench/bench_reconcile.py (the fake
lives under tests/)."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, date, datetime, timedelta

from pydantic import SecretStr

from connectors.alpaca_broker import BrokerSession
from connectors.credentials import CredentialSource
from tests.fakes.alpaca_trading import FakeAlpacaTrading
from trading.accounts import AccountDesk
from trading.calendar import TradingCalendar
from trading.gates import AccountConfig

ACCOUNTS = (("large-100k", "key-a", "secret-a"), ("tiny-1k", "key-b", "secret-b"))
POSITIONS = 30
PASSES = 10


def main() -> None:
    fake = FakeAlpacaTrading().start()
    expiry = date.today() + timedelta(days=60)
    sessions = {}
    for name, key, secret in ACCOUNTS:
        fake.add_account(key, secret, cash=100_000.0, buying_power=200_000.0)
        for i in range(POSITIONS):
            if i % 3 == 0:  # a third are option contracts
                symbol = f"QCOM{expiry:%y%m%d}C{(100 + i) * 1000:08d}"
                fake.set_position(symbol, 1 + i % 4, 2.5, key=(key, secret), current_price=2.0 + i / 100)
            else:
                symbol = f"S{i:03d}"
                fake.assets.add(symbol)
                fake.set_position(symbol, 10 + i, 50.0, key=(key, secret), current_price=51.0)
        sessions[name] = BrokerSession(CredentialSource(file=None, key_id=SecretStr(key), secret_key=SecretStr(secret)),
                                       trading_url=fake.url, data_url=fake.url)
    desks = {name: AccountDesk(AccountConfig(name=name, mode="alpaca-paper"), TradingCalendar()) for name, *_ in ACCOUNTS}
    pass_s: list[float] = []
    fold_s: list[float] = []
    calls_before = sum(s.calls for s in sessions.values())
    records = 0
    for _ in range(PASSES):
        now = datetime.now(UTC)
        t = time.perf_counter()
        snaps = {name: s.snapshot(name, pipeline_symbols=(), trigger="poll", now=now) for name, s in sessions.items()}
        pass_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for name, (account, positions) in snaps.items():
            for p in positions:
                desks[name].on_broker(p, now)
            desks[name].on_broker(account, now)
            records += len(positions) + 1
        fold_s.append(time.perf_counter() - t)
    calls = (sum(s.calls for s in sessions.values()) - calls_before) / PASSES
    fake.stop()
    print(f"reconcile pass, {len(ACCOUNTS)} accounts x {POSITIONS} positions ({POSITIONS // 3} options each), "
          f"{PASSES} passes against the local fake (alpaca-py over HTTP):")
    print(f"  REST calls per pass: {calls:.0f} ({calls / len(ACCOUNTS):.0f} per account: account, positions, "
          "open orders)")
    print(f"  read time per pass: median {statistics.median(pass_s) * 1000:.1f} ms, "
          f"max {max(pass_s) * 1000:.1f} ms")
    print(f"  desk fold per pass: median {statistics.median(fold_s) * 1000:.2f} ms "
          f"({records // PASSES} records)")


if __name__ == "__main__":
    main()
