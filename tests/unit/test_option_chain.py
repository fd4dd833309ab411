"""The contract choice: the options block's validation, calls for BUY and puts for SELL nearest the
target delta, the tie-breaks, malformed chain data skipped with its reason, and the chain snapshot
a decision may see (never one taken after it)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.codec import HeaderCodec, decode
from schemas.records import OptionQuote
from trading.option_chain import (
    ChainBook,
    OptionsConfig,
    chain_id,
    chain_window,
    choose_contract,
    latest_chain,
    option_type_for,
)

NOW = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)  # a Monday
TAKEN = NOW - timedelta(seconds=30)
CID = chain_id("QCOM", TAKEN)


def q(strike: float, delta: float | None, *, cp: str = "C", bid: float | None = 4.0, ask: float | None = 4.2,
      oi: int | None = 500, expiry: str = "260227", taken: datetime = TAKEN, **kw: Any) -> OptionQuote:
    contract = f"QCOM{expiry}{cp}{round(strike * 1000):08d}"
    return OptionQuote(contract, "QCOM", taken, bid, ask, 10.0, 10.0, None, 0.3, delta, 0.04, -0.05, 0.2,
                       "chain", taken, open_interest=oi, penny_program=True, underlying_price=150.0,
                       chain_id=chain_id("QCOM", taken), chain_as_of=taken, **kw)


CHAIN = [
    q(140, 0.80), q(145, 0.62), q(150, 0.52), q(155, 0.41), q(160, 0.22),
    q(140, -0.20, cp="P"), q(145, -0.37, cp="P"), q(150, -0.47, cp="P"), q(155, -0.58, cp="P"),
]


def choose(quotes: list[OptionQuote], action: str = "BUY", config: OptionsConfig | None = None,
           now: datetime = NOW) -> Any:
    return choose_contract(quotes, underlying="QCOM", action=action, now=now,
                           config=config or OptionsConfig())


# -- the options block -------------------------------------------------------------------------


def test_options_config_reads_a_block_and_round_trips() -> None:
    cfg = OptionsConfig.from_dict({"min_dte": 7, "max_dte": 45, "target_delta": 0.5, "delta_band": 0.15,
                                   "max_spread_pct": 10, "min_open_interest": 100,
                                   "max_premium_per_contract": 800, "limit": "ask",
                                   "cancel_after_minutes": 5})
    assert cfg.limit == "ask" and cfg.max_premium_per_contract == 800
    assert OptionsConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("block", "message"), [
    ({"min_dte": 50, "max_dte": 45}, "min_dte 50 is above max_dte 45"),
    ({"min_dte": -1}, "min_dte must be a whole number"),
    ({"target_delta": 1.2}, "target_delta 1.2 must be between 0 and 1"),
    ({"delta_band": -0.1}, "delta_band -0.1 must be in [0, 1)"),
    ({"max_spread_pct": 0}, "max_spread_pct 0 must be positive"),
    ({"limit": "market"}, "limit 'market' is not one of"),
    ({"max_premium_per_contract": float("nan")}, "max_premium_per_contract nan must be a positive number"),
    ({"target_delta": "0.5"}, "target_delta must be a number"),
    ({"min_open_interest": 10.5}, "min_open_interest must be a whole number"),
    ({"dte_min": 7}, "unknown fields ['dte_min']"),
])
def test_options_config_refuses_a_bad_block_with_a_clear_error(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^options: ") as err:
        OptionsConfig.from_dict(block)
    assert message in str(err.value)


def test_chain_window_asks_for_explicit_expiry_bounds_and_strikes_around_the_close() -> None:
    w = chain_window("QCOM", 150.0, NOW, OptionsConfig(min_dte=7, max_dte=45, strike_range_pct=10))
    assert (w.expiration_gte.isoformat(), w.expiration_lte.isoformat()) == ("2026-02-09", "2026-03-19")
    assert (w.strike_gte, w.strike_lte) == (135.0, 165.0)


# -- the choice --------------------------------------------------------------------------------


def test_buy_takes_the_call_nearest_the_target_delta() -> None:
    choice = choose(CHAIN, "BUY")
    assert choice.quote is not None and choice.quote.contract == "QCOM260227C00150000"
    assert choice.limit_price == 4.1 and choice.chain_id == CID
    verdicts = {c.contract[-9:]: (c.verdict, c.reason) for c in choice.candidates}
    assert len(verdicts) == 5  # the calls only
    assert verdicts["C00160000"] == ("rejected", "|delta| 0.220 outside 0.5 +- 0.15")
    assert verdicts["C00155000"][0] == "outranked" and "farther from target" in verdicts["C00155000"][1]
    assert "chose QCOM260227C00150000: delta 0.52 nearest 0.5 of 3 within limits" in choice.reason


def test_sell_takes_the_put_nearest_minus_the_target_delta() -> None:
    choice = choose(CHAIN, "SELL")
    assert choice.quote is not None and choice.quote.contract == "QCOM260227P00150000"
    assert {c.contract for c in choice.candidates} == {x.contract for x in CHAIN if "P" in x.contract[10:]}
    assert option_type_for("SELL") == "put"


def test_a_tie_on_delta_goes_to_the_tighter_spread_then_the_higher_open_interest() -> None:
    tight = q(150, 0.50, expiry="260220", bid=4.0, ask=4.1)
    wide = q(150, 0.50, expiry="260227", bid=4.0, ask=4.3)
    choice = choose([wide, tight])
    assert choice.quote is not None and choice.quote.contract == tight.contract
    lost = next(c for c in choice.candidates if c.contract == wide.contract)
    assert lost.verdict == "outranked" and "wider spread" in lost.reason
    more = q(150, 0.50, expiry="260220", oi=900)
    less = q(150, 0.50, expiry="260227", oi=300)
    choice = choose([less, more])
    assert choice.quote is not None and choice.quote.contract == more.contract
    lost = next(c for c in choice.candidates if c.contract == less.contract)
    assert "less open interest 300 vs 900" in lost.reason


def test_nothing_within_the_limits_is_a_clear_reason_and_no_contract() -> None:
    choice = choose([q(140, 0.80), q(160, 0.22, oi=5)], "BUY", OptionsConfig(min_open_interest=100))
    assert choice.quote is None and choice.limit_price is None
    assert choice.reason == "no call of QCOM passed (2 considered)"
    assert [c.reason for c in choice.candidates] == ["|delta| 0.800 outside 0.5 +- 0.15",
                                                      "|delta| 0.220 outside 0.5 +- 0.15"]
    assert choose([], "BUY").reason == "no option chain of QCOM on the topic yet"
    assert "has none" in choose([q(150, -0.5, cp="P")], "BUY").reason


@pytest.mark.parametrize(("config", "bad", "reason"), [
    (OptionsConfig(), q(150, 0.5, oi=50), "open interest 50 below 100"),
    (OptionsConfig(), q(150, 0.5, oi=None), "open interest unknown"),
    (OptionsConfig(), q(150, 0.5, bid=3.0, ask=4.0), "spread 28.6% above 10%"),
    (OptionsConfig(), q(150, 0.5, expiry="260206"), "4 days to expiry outside 7-45"),
    (OptionsConfig(), q(150, 0.5, expiry="260417"), "74 days to expiry outside 7-45"),
    (OptionsConfig(max_premium_per_contract=400), q(150, 0.5), "premium 410.00 per contract above 400"),
    (OptionsConfig(limit="ask", max_premium_per_contract=415), q(150, 0.5), "premium 420.00 per contract"),
])
def test_each_limit_rejects_with_its_reason(config: OptionsConfig, bad: OptionQuote, reason: str) -> None:
    choice = choose([bad], config=config)
    assert choice.quote is None
    assert reason in choice.candidates[0].reason, choice.candidates[0]


@pytest.mark.parametrize(("bad", "reason"), [
    (q(150, None), "no delta (greeks missing)"),
    (q(150, float("nan")), "delta nan is not between -1 and 1"),
    (q(150, 1.7), "delta 1.7 is not between -1 and 1"),
    (q(150, -0.5), "delta -0.5 has the wrong sign for a call"),
    (q(150, 0.5, bid=0.0), "zero bid"),
    (q(150, 0.5, bid=None), "no bid"),
    (q(150, 0.5, ask=None), "no ask"),
    (q(150, 0.5, bid=4.4, ask=4.2), "crossed quote (bid 4.4 > ask 4.2)"),
    (q(150, 0.5, bid=float("nan")), "bid/ask not a number (nan/4.2)"),
    (q(150, 0.5, ask=float("inf")), "bid/ask not a number (4.0/inf)"),
    (q(150, 0.5, oi=-3), "negative open interest -3"),
    (replace(q(150, 0.5), expiration="2026-02-30"), "expiration '2026-02-30' unreadable"),
])
def test_malformed_chain_data_is_skipped_with_a_reason_never_chosen(bad: OptionQuote, reason: str) -> None:
    good = q(155, 0.40)
    choice = choose([bad, good])
    assert choice.quote is not None and choice.quote.contract == good.contract  # never the malformed one
    skipped = next(c for c in choice.candidates if c.contract == bad.contract)
    assert (skipped.verdict, skipped.reason) == ("rejected", reason)
    assert math.isfinite(choice.limit_price or math.nan)


def test_a_modelled_chain_needs_no_open_interest() -> None:
    modelled = replace(q(150, 0.5, oi=None), modelled=True, source="model")
    assert choose([modelled]).quote == modelled


# -- which chain a decision sees ---------------------------------------------------------------


def test_the_newest_chain_taken_by_the_decision_is_used_never_a_later_one() -> None:
    old = [q(150, 0.50, taken=NOW - timedelta(minutes=3)), q(155, 0.45, taken=NOW - timedelta(minutes=3))]
    new = [q(155, 0.50, taken=NOW - timedelta(minutes=1))]  # 150 not in the newest: not taken from the old
    later = [q(160, 0.50, taken=NOW + timedelta(minutes=1))]
    cid, records = latest_chain(old + new + later, "QCOM", NOW)
    assert cid == chain_id("QCOM", NOW - timedelta(minutes=1)) and records == new
    choice = choose(old + later + new)
    assert choice.quote == new[0]
    assert choose(later).reason == "no option chain of QCOM on the topic yet"


def test_a_stale_chain_is_not_chosen_from() -> None:
    stale = [q(150, 0.5, taken=NOW - timedelta(minutes=10))]
    choice = choose(stale, config=OptionsConfig(max_chain_age_s=300))
    assert choice.quote is None and choice.reason.endswith("is 600s old (max 300s)")


def test_the_choice_is_a_function_of_the_records_not_their_order() -> None:
    shuffled = list(reversed(CHAIN))
    assert choose(shuffled) == choose(CHAIN)


def test_the_chain_book_keeps_the_newest_snapshots_per_underlying() -> None:
    book = ChainBook(keep=2)
    chains = [[q(150, 0.5, taken=NOW - timedelta(minutes=m))] for m in (5, 4, 3)]
    for chain in chains:
        for record in chain:
            assert book.add(record)
    assert book.quotes("QCOM") == chains[1] + chains[2]
    assert not book.add(q(150, 0.5, taken=NOW - timedelta(minutes=9)))  # older than both kept
    assert not book.add(replace(q(150, 0.5), chain_id=None))
    assert book.choose(underlying="QCOM", action="BUY", now=NOW, config=OptionsConfig()).quote == chains[2][0]


def test_chain_records_round_trip_through_the_codec() -> None:
    codec = HeaderCodec()
    record = replace(CHAIN[2], modelled=True, source="model")
    value, headers = codec.encode("options.quotes", record)
    assert (b"2") in dict(headers).values()
    assert decode(codec, OptionQuote, value, headers, topic="options.quotes") == record
