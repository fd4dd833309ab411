"""empyrical, the oracle: the ledger's and the report's metrics agree with it on per-minute returns: the
same Sharpe (sample deviation, sqrt(252 x 390)) and maximum drawdown; Sortino on a hand-checked case."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import empyrical
import numpy as np
import pytest

from pipeline.report_html import sortino
from trading.ledger import MINUTES_PER_YEAR, Ledger


def test_empyrical_sharpe_and_drawdown_equal_the_ledger_s() -> None:
    rng = np.random.default_rng(7)
    equity = 10_000 * np.cumprod(1 + rng.normal(0.0001, 0.002, 2000))
    led = Ledger("a", 10_000.0)
    start = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)
    led.curve = [(start + timedelta(minutes=i), float(v)) for i, v in enumerate(equity)]
    ours = led.summary(bars=0, seconds=0)
    rets = equity[1:] / equity[:-1] - 1
    sharpe = empyrical.sharpe_ratio(rets, annualization=MINUTES_PER_YEAR)
    assert sharpe == pytest.approx(ours["sharpe"], rel=1e-9)
    assert -empyrical.max_drawdown(rets) == pytest.approx(ours["max_drawdown"], rel=1e-9)


def test_sortino_of_a_hand_checked_curve() -> None:
    values = [100.0, 110.0, 99.0, 108.9]  # returns +10 %, -10 %, +10 %
    mean, down = 0.1 / 3, math.sqrt(0.01 / 3)  # downside: root mean square over all three minutes
    assert sortino(values) == pytest.approx(mean / down * math.sqrt(MINUTES_PER_YEAR))
    assert sortino([100.0, 101.0, 102.0]) is None  # no downside


def test_the_report_s_sortino_is_empyrical_s() -> None:
    equity = 10_000 * np.cumprod(1 + np.random.default_rng(3).normal(0.0001, 0.002, 2000))
    rets = equity[1:] / equity[:-1] - 1
    expected = empyrical.sortino_ratio(rets, annualization=MINUTES_PER_YEAR)
    assert sortino(equity.tolist()) == pytest.approx(expected, rel=1e-9)
