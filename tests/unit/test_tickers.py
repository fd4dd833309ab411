"""Ticker inference, table-driven: cashtags, bare symbols, names and aliases, and the traps."""

from __future__ import annotations

import pytest

from opsinfra.settings import DEFAULT_SYMBOLS
from trading.news import infer_tickers

UNIVERSE = DEFAULT_SYMBOLS  # AAPL MSFT TSLA GOOGL AMZN META NVDA

CASES: list[tuple[str, list[str]]] = [
    # cashtags, any case, only for the universe
    ("$AAPL and $TSLA rally", ["AAPL", "TSLA"]),
    ("$tsla squeezes shorts", ["TSLA"]),
    ("$META ad revenue", ["META"]),
    ("$GOOG slips", ["GOOGL"]),  # its twin class is in the universe
    ("$FB renamed long ago", ["META"]),
    ("$IBM and $5B deal", []),
    ("US$AAPL is not a cashtag", []),
    # bare upper-case symbols on word boundaries
    ("NVDA hits record; AAPL flat", ["NVDA", "AAPL"]),
    ("AAPL's buyback", ["AAPL"]),
    ("nvda lower case is not a symbol", []),
    ("MSFTX is another fund", []),
    ("AMZN/MSFT pair trade", ["AMZN", "MSFT"]),
    # ambiguous bare symbols need a cashtag or an exchange (or to be the company's name)
    ("META-ANALYSIS SHOWS GAINS", []),
    ("META SHARES RISE", ["META"]),  # the name in capitals; its context rules still apply
    ("Shares of Meta Platforms (NASDAQ: META) rose", ["META"]),
    ("NYSE:META is wrong but counts", ["META"]),
    # company names and common aliases
    ("Apple unveils new iPhone", ["AAPL"]),
    ("APPLE SUES SUPPLIER", ["AAPL"]),
    ("Apple's services revenue", ["AAPL"]),
    ("Microsoft and Nvidia team up", ["MSFT", "NVDA"]),
    ("NVIDIA earnings beat", ["NVDA"]),
    ("Alphabet reports; Google Cloud grows", ["GOOGL"]),
    ("Facebook owner faces fine", ["META"]),
    ("Meta Platforms beats estimates", ["META"]),
    ("Meta's Reality Labs loses money", ["META"]),
    ("Amazon.com raises prices", ["AMZN"]),
    ("AWS outage hits websites", ["AMZN"]),
    ("Amazon Web Services signs deal", ["AMZN"]),
    ("Tesla deliveries fall", ["TSLA"]),
    ("a Tesla Model 3 was recalled", ["TSLA"]),
    ("Tesla, Apple and Amazon lead", ["TSLA", "AAPL", "AMZN"]),
    ("Amazon sues Apple over Tesla-style ads", ["AMZN", "AAPL", "TSLA"]),
    # the traps
    ("Grandma's apple pie wins", []),
    ("Apple pie recipes for autumn", []),
    ("Apple-picking season opens", []),
    ("Apple orchards suffer frost", []),
    ("New York, the Big Apple, welcomes tourists", []),
    ("pineapple prices climb", []),
    ("Meta-analysis finds coffee is fine", []),
    ("A meta-analysis of 40 trials", []),
    ("Meta analysis of 40 trials", []),
    ("the meta of the game shifted", []),
    ("SEO: how to write a meta description", []),
    ("a tesla coil lights the stage", []),
    ("A Tesla coil at the science fair", []),
    ("Nikola Tesla museum reopens", []),
    ("Hospital buys a 3 Tesla MRI scanner", []),
    ("a 1.5-tesla magnet", []),
    ("Fires rage in the Amazon rainforest", []),
    ("Amazon rainforest loses ground", []),
    ("Deforestation in the Amazon slows", []),
    ("Amazon River levels fall", []),
    ("Learn the Greek alphabet", []),
    ("Alphabet soup of regulators", []),
    ("google it yourself", []),
    ("microsoft-like lowercase", []),
    # mixed: the company is there, and so is a trap
    ("Apple pie and Apple shares", ["AAPL"]),
    ("$AMZN gains as fires hit the Amazon rainforest", ["AMZN"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] or "empty" for c in CASES])
def test_infer_tickers(text: str, expected: list[str]) -> None:
    assert infer_tickers(text, UNIVERSE) == expected


@pytest.mark.parametrize(
    ("text", "universe", "expected"),
    [
        ("Apple and Tesla", ("AAPL",), ["AAPL"]),  # names outside the universe are ignored
        ("$TSLA", ("AAPL",), []),
        ("Google and $GOOG", ("GOOG",), ["GOOG"]),  # aliases follow the twin in the universe
        ("IBM beats; $IBM up", ("IBM",), ["IBM"]),  # no alias table needed for symbols
        ("IT spending rises", ("IT",), []),  # short symbols are never bare
        ("Gartner (NYSE: IT) says", ("IT",), ["IT"]),
        ("aapl", ("aapl",), []),  # the universe is upper-cased; text symbols are not
        ("Apple", (), []),
    ],
)
def test_infer_tickers_respects_the_universe(
    text: str, universe: tuple[str, ...], expected: list[str]
) -> None:
    assert infer_tickers(text, universe) == expected


def test_order_is_first_mention_and_each_once() -> None:
    text = "NVDA up. Microsoft down. $NVDA again, and Nvidia once more; MSFT flat."
    assert infer_tickers(text, UNIVERSE) == ["NVDA", "MSFT"]
