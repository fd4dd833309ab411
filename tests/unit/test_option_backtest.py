"""An option account in the Backtester: over recorded chains (options.quotes records fed with
add_broker) it buys calls and puts, fills and exits only at quoted prices; over bars only it
prices synthetic chains and its results are labelled modelled."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import timedelta

from schemas.records import Bar, OptionQuote
from tests.integration.test_trading_helpers import OPEN
from trading.backtest import Backtester
from trading.calendar import TradingCalendar
from trading.execution import exit_reason_of
from trading.gates import LARGE_100K, AccountConfig
from trading.option_chain import OptionsConfig
from trading.option_pricing import synthetic_chain
from trading.options import parse_occ

CAL = TradingCalendar()
OPTS = OptionsConfig(min_dte=7, max_dte=21, strike_range_pct=4.0, max_chain_age_s=600.0, limit="ask",
                     min_open_interest=100)
OPTION = AccountConfig(name="opt", instrument="option", min_confidence=0.0, notional_per_trade=2_000.0,
                       max_notional_per_trade=3_000.0, options=OPTS)
STOCK = replace(LARGE_100K, name="stock", min_confidence=0.0)
MINUTES = 380
SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA")


def session_bars(minutes: int = MINUTES, seed: int = 1) -> list[Bar]:
    """The session of tests.integration.test_trading_helpers.session_features as bars: prices
    drifting up and down in turns, so the rule fires BUYs and SELLs (and reverses some)."""
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


def recorded_chains(bars: list[Bar], every: int = 5) -> list[OptionQuote]:
    """What the connector would have recorded: a chain snapshot of each symbol every `every`
    minutes (priced by the model here, then stamped as quoted records with open interest)."""
    out: list[OptionQuote] = []
    for b in bars:
        if b.ts.minute % every == 0:
            out.extend(replace(q, modelled=False, source="chain", open_interest=500)
                       for q in synthetic_chain(b.symbol, b.close, b.ts, iv=0.3, config=OPTS, calendar=CAL))
    return out


def test_recorded_chains_buy_calls_and_puts_and_fill_and_exit_only_at_quoted_prices() -> None:
    bars = session_bars()
    chains = recorded_chains(bars)
    quoted = {(q.contract, q.as_of): q for q in chains}
    bt = Backtester([OPTION, STOCK], CAL)
    bt.add_broker(chains)
    res = bt.run(bars)
    mine = [e for e in res.executions if e.account == "opt"]
    entries = [e for e in mine if e.intent == "entry" and e.status == "SIMULATED"]
    exits = [e for e in mine if e.intent == "exit" and e.status == "SIMULATED"]
    assert entries and exits
    kinds = {parse_occ(e.symbol).option_type for e in entries}  # type: ignore[union-attr]
    assert kinds == {"call", "put"}
    signals = {r.id: r for r in res.signals}
    for e in entries:
        occ = parse_occ(e.symbol)
        assert occ is not None and e.action == "BUY"
        assert occ.option_type == ("call" if signals[e.recommendation_id].action == "BUY" else "put")
        asks = {q.ask for (c, _), q in quoted.items() if c == e.symbol}
        assert e.price in asks  # limit "ask": the quote's ask, on its tick
    for e in exits:
        assert e.action == "SELL" and exit_reason_of(e) in ("reversal", "stop_loss", "take_profit",
                                                            "option_expiry")
        bids = {q.bid for (c, _), q in quoted.items() if c == e.symbol}
        assert e.price in bids
    summary = {s["account"]: s for s in res.summaries()}
    assert "modelled" not in summary["opt"] and "modelled" not in summary["stock"]
    trades = res.ledgers["opt"].trades
    assert trades and all(t.qty == int(t.qty) for t in trades)  # whole contracts
    assert summary["opt"]["realized_pnl"] == round(sum((t.exit_price - t.entry_price) * t.qty * 100
                                                       for t in trades), 2)
    alone = Backtester([STOCK], CAL).run(bars).executions  # the stock account decides as without it
    assert [e for e in res.executions if e.account == "stock"] == alone


def test_without_recorded_chains_a_research_run_models_them_and_says_so() -> None:
    bars = session_bars()
    res = Backtester([OPTION, STOCK], CAL, synthetic_iv=0.3).run(bars)
    mine = [e for e in res.executions if e.account == "opt"]
    entries = [e for e in mine if e.intent == "entry" and e.status == "SIMULATED"]
    assert entries
    for e in entries:
        assert any(g.name == "option_chain" and g.value == "modelled" for g in e.gates)
    exits = [e for e in mine if e.intent == "exit"]
    assert exits and all("modelled" in e.gates[-1].reason for e in exits)
    summary = {s["account"]: s for s in res.summaries()}
    assert summary["opt"]["modelled"] is True and "modelled" not in summary["stock"]
    # no chain and no model: every option entry skips, nothing is priced
    bare = Backtester([OPTION], CAL).run(bars).executions
    assert bare and {e.status for e in bare} == {"SKIPPED"}
    assert all((e.failure_reason or "").startswith("option_contract: no option chain of ") for e in bare)


def test_the_same_records_backtested_twice_decide_identically() -> None:
    bars = session_bars()
    chains = recorded_chains(bars)

    def run(records: list[OptionQuote]) -> list[object]:
        bt = Backtester([OPTION], CAL)
        bt.add_broker(records)
        return list(bt.run(bars).executions)

    assert run(chains) == run(list(reversed(chains)))  # delivery order does not matter
