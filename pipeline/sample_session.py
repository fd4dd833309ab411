"""Generates the bundled, synthetic sample session (IEX-like minute bars with surges, no-trade minutes,
an updated bar and a gap, and the day's news), deterministic per seed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SESSION = date(2026, 11, 20)  # a regular Friday session: 14:30-21:00 UTC
OPEN_UTC = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
MINUTES = 390

# symbol: (company, opening price, IEX shares per day, daily volatility)
UNIVERSE = {
    "AAPL": ("Apple", 228.0, 900_000, 0.014),
    "MSFT": ("Microsoft", 415.0, 420_000, 0.013),
    "TSLA": ("Tesla", 340.0, 1_400_000, 0.032),
    "GOOGL": ("Alphabet", 175.0, 520_000, 0.016),
    "AMZN": ("Amazon", 200.0, 650_000, 0.017),
    "META": ("Meta", 560.0, 300_000, 0.019),
    "NVDA": ("Nvidia", 140.0, 2_100_000, 0.028),
}

POSITIVE = [
    "{co} shares jump after earnings beat estimates",
    "{co} raises full-year guidance on strong demand",
    "Analysts upgrade {co} to buy, citing margin expansion",
    "${sym} rallies as {co} unveils new product line",
]
NEGATIVE = [
    "{co} shares slide after regulator opens probe",
    "{co} cuts outlook as costs rise",
    "${sym} falls after {co} announces recall",
    "Analysts downgrade {co} on slowing growth",
]
MARKET = [
    ("Fed minutes show officials split on pace of cuts", "Treasury yields were little changed."),
    ("Oil steadies as traders weigh supply outlook", "Brent crude held near recent levels."),
    ("Researchers publish meta-analysis of apple pie recipes", "A lighter story, with no tickers."),
]


@dataclass(frozen=True)
class NewsEvent:
    symbol: str | None
    minute: int
    direction: int  # +1, -1, 0
    title: str
    summary: str


def _u_shape(minute: int) -> float:
    """Relative volume of a minute: heavy at the open and into the close."""
    return 0.55 + 2.6 * math.exp(-minute / 22.0) + 1.8 * math.exp(-(MINUTES - 1 - minute) / 18.0)


def _news(rng: random.Random) -> list[NewsEvent]:
    events = []
    for sym, (co, *_rest) in UNIVERSE.items():
        for _ in range(2):
            direction = rng.choice((1, -1))
            minute = rng.randrange(20, MINUTES - 40)
            title = rng.choice(POSITIVE if direction > 0 else NEGATIVE).format(co=co, sym=sym)
            summary = f"<p>{co} ({sym}) moved on the report; <b>volume</b> picked up.</p>"
            events.append(NewsEvent(sym, minute, direction, title, summary))
    for title, summary in MARKET:
        events.append(NewsEvent(None, rng.randrange(0, MINUTES), 0, title, summary))
    return sorted(events, key=lambda e: (e.minute, e.title))


def generate(
    seed: int = 20261120,
) -> tuple[list[dict[str, object]], list[dict[str, object]], dict[str, object]]:
    """(bar rows, news rows, notes) for the session."""
    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not security
    news = _news(rng)
    no_trade: dict[str, set[int]] = {sym: set() for sym in UNIVERSE}
    for sym in ("MSFT", "META"):  # the thinnest on IEX: a few empty minutes mid-day
        no_trade[sym] = {rng.randrange(120, 260) for _ in range(4)}
    gap_symbol, gap_start, gap_len = "GOOGL", 201, 4  # an outage ate these minutes
    updated_symbol, updated_minute = "AAPL", 95

    bars: list[dict[str, object]] = []
    for sym, (_co, price, daily_volume, daily_vol) in UNIVERSE.items():
        per_minute_vol = daily_vol / math.sqrt(MINUTES)
        base_volume = daily_volume / sum(_u_shape(m) for m in range(MINUTES))
        close = price
        for m in range(MINUTES):
            drift, surge = 0.0, 1.0
            for ev in news:
                if ev.symbol == sym and 0 <= m - ev.minute < 15:
                    age = m - ev.minute
                    drift += ev.direction * per_minute_vol * 0.9 * math.exp(-age / 6.0)
                    surge += 4.0 * math.exp(-age / 4.0)
            ret = drift + rng.gauss(0.0, per_minute_vol)
            open_ = close
            close = round(open_ * math.exp(ret), 2)
            wiggle = abs(rng.gauss(0.0, per_minute_vol * 0.6)) * open_
            high = round(max(open_, close) + wiggle, 2)
            low = round(min(open_, close) - abs(rng.gauss(0.0, per_minute_vol * 0.6)) * open_, 2)
            volume = max(1, int(base_volume * _u_shape(m) * surge * rng.lognormvariate(0.0, 0.35)))
            if m in no_trade[sym] or (sym == gap_symbol and gap_start <= m < gap_start + gap_len):
                continue
            ts = OPEN_UTC + timedelta(minutes=m)
            trades = max(1, volume // rng.randint(60, 140))
            vwap = round((open_ + high + low + close) / 4, 4)
            row = dict(
                symbol=sym,
                ts=ts.isoformat(),
                open=open_,
                high=high,
                low=low,
                close=close,
                volume=volume,
                trade_count=trades,
                vwap=vwap,
                revision=0,
            )
            bars.append(row)
            if sym == updated_symbol and m == updated_minute:
                late = max(1, volume // 10)  # late trades: more volume, a new high
                bars.append(
                    {
                        **row,
                        "high": round(high + 0.03, 2),
                        "volume": volume + late,
                        "trade_count": trades + late // 80 + 1,
                        "revision": 1,
                    }
                )
    bars.sort(key=lambda r: (str(r["ts"]), int(r["revision"]), str(r["symbol"])))  # type: ignore[call-overload]

    news_rows: list[dict[str, object]] = []
    for ev in news:
        published = OPEN_UTC + timedelta(minutes=ev.minute, seconds=rng.randrange(0, 60))
        slug = hashlib.sha256(ev.title.encode()).hexdigest()[:8]
        link = f"https://news.example.invalid/{SESSION.isoformat()}/{ev.minute}-{slug}"
        news_rows.append(
            dict(
                id=hashlib.sha256(link.encode()).hexdigest()[:32],
                feed="sample-wire",
                title=ev.title,
                summary=ev.summary,
                link=link,
                published=published.isoformat(),
            )
        )
    notes = {
        "synthetic": True,
        "session": SESSION.isoformat(),
        "seed": seed,
        "no_trade_minutes": {
            s: sorted((OPEN_UTC + timedelta(minutes=m)).isoformat() for m in ms)
            for s, ms in no_trade.items()
            if ms
        },
        "gap": {
            "symbol": gap_symbol,
            "start": (OPEN_UTC + timedelta(minutes=gap_start)).isoformat(),
            "minutes": gap_len,
        },
        "updated_bar": {
            "symbol": updated_symbol,
            "ts": (OPEN_UTC + timedelta(minutes=updated_minute)).isoformat(),
        },
    }
    return bars, news_rows, notes


def write(out: Path, seed: int = 20261120) -> None:
    bars, news, notes = generate(seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bars.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(bars[0]))
        writer.writeheader()
        writer.writerows(bars)
    with open(out / "news.jsonl", "w") as fh:
        for row in news:
            fh.write(json.dumps(row) + "\n")
    (out / "README.json").write_text(json.dumps(notes, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/sample_session"))
    parser.add_argument("--seed", type=int, default=20261120)
    args = parser.parse_args()
    write(args.out, args.seed)


if __name__ == "__main__":
    main()
