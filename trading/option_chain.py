"""Which option contract an entry buys: a pure function of the chain records on options.quotes, the
signal and the account's options block, so a backtest over the topic chooses what live chose, and
every candidate it did not take is recorded with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from schemas.records import OptionQuote
from trading.calendar import trading_day
from trading.options import CONTRACT_MULTIPLIER, LIMIT_MODES, limit_price, parse_occ

INSTRUMENTS = ("stock", "option")


@dataclass(frozen=True, slots=True)
class OptionsConfig:
    """An account's options block. Percentages in percent (10 = 10%), money in USD."""

    min_dte: int = 7
    max_dte: int = 45
    target_delta: float = 0.50  # |delta| wanted: calls for BUY signals, puts for SELL
    delta_band: float = 0.15  # |delta| within target +- band
    max_spread_pct: float = 10.0  # (ask - bid) / mid
    min_open_interest: int = 100
    max_premium_per_contract: float | None = None  # limit x 100
    limit: str = "mid"  # mid | ask
    cancel_after_minutes: int = 5  # an unfilled DAY limit is canceled after this
    strike_range_pct: float = 15.0  # strikes read around the close: +- this much
    max_chain_age_s: float = 300.0  # an older chain snapshot is not chosen from
    entry_cutoff_minutes: int = 30  # no new option entries in the session's last minutes
    # exits of an option position, on its premium (the quote's mid): None turns a rule off
    stop_loss_pct: float | None = 50.0  # premium fell this much below the entry
    take_profit_pct: float | None = 100.0  # premium rose this much above the entry

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"options: {what}")

        for name in ("min_dte", "max_dte", "min_open_interest", "cancel_after_minutes",
                     "entry_cutoff_minutes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(f"{name} must be a whole number >= 0, not {value!r}")
        if self.min_dte > self.max_dte:
            raise bad(f"min_dte {self.min_dte} is above max_dte {self.max_dte}")
        for name in ("target_delta", "delta_band", "max_spread_pct", "strike_range_pct", "max_chain_age_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise bad(f"{name} must be a number, not {value!r}")
        if not 0.0 < self.target_delta < 1.0:
            raise bad(f"target_delta {self.target_delta} must be between 0 and 1 (exclusive)")
        if not 0.0 <= self.delta_band < 1.0:
            raise bad(f"delta_band {self.delta_band} must be in [0, 1)")
        if self.max_spread_pct <= 0:
            raise bad(f"max_spread_pct {self.max_spread_pct} must be positive")
        if not 0.0 < self.strike_range_pct < 100.0:
            raise bad(f"strike_range_pct {self.strike_range_pct} must be between 0 and 100")
        if self.max_chain_age_s <= 0:
            raise bad(f"max_chain_age_s {self.max_chain_age_s} must be positive")
        premium = self.max_premium_per_contract
        if premium is not None and (isinstance(premium, bool) or not isinstance(premium, int | float)
                                    or not math.isfinite(premium) or premium <= 0):
            raise bad(f"max_premium_per_contract {premium!r} must be a positive number or null")
        for name in ("stop_loss_pct", "take_profit_pct"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value) or value <= 0):
                raise bad(f"{name} {value!r} must be a positive number or null")
        if self.stop_loss_pct is not None and self.stop_loss_pct >= 100:
            raise bad(f"stop_loss_pct {self.stop_loss_pct} must be below 100")
        if self.limit not in LIMIT_MODES:
            raise bad(f"limit {self.limit!r} is not one of {LIMIT_MODES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptionsConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"options: expected an object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"options: unknown fields {sorted(unknown)} (known: {sorted(known)})")
        return cls(**dict(data))


class ChainWindow(NamedTuple):
    """What to ask Alpaca for (both bounds explicit: its default upper bound is the next weekend)."""

    underlying: str
    expiration_gte: date
    expiration_lte: date
    strike_gte: float
    strike_lte: float


def chain_window(underlying: str, close: float, now: datetime, config: OptionsConfig) -> ChainWindow:
    today = trading_day(now)
    pct = config.strike_range_pct / 100.0
    return ChainWindow(underlying, today + timedelta(days=config.min_dte),
                       today + timedelta(days=config.max_dte), round(close * (1.0 - pct), 2),
                       round(close * (1.0 + pct), 2))


def chain_id(underlying: str, as_of: datetime) -> str:
    """The id of one chain snapshot: every record of it carries this."""
    return f"{underlying}@{as_of:%Y-%m-%dT%H:%M:%S}Z"


def option_type_for(action: str) -> str:
    """BUY signals buy calls, SELL signals buy puts."""
    if action == "BUY":
        return "call"
    if action == "SELL":
        return "put"
    raise ValueError(f"action {action!r}: expected BUY or SELL")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One contract considered, what it was judged on, and the verdict."""

    contract: str
    verdict: str  # chosen | outranked | rejected
    reason: str
    delta: float | None = None
    spread_pct: float | None = None
    open_interest: int | None = None
    dte: int | None = None
    limit_price: float | None = None

    def describe(self) -> str:
        return f"{self.contract}: {self.verdict}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ContractChoice:
    """The chosen quote (None: nothing passed) and why, with every candidate considered."""

    quote: OptionQuote | None
    reason: str
    candidates: tuple[Candidate, ...] = ()
    chain_id: str | None = None
    limit_price: float | None = None

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.verdict == "chosen"), None)

    def rejected(self) -> list[Candidate]:
        return [c for c in self.candidates if c.verdict != "chosen"]

    def detail(self, most: int = 20) -> str:
        """One text for an Execution's gate: the verdict, then up to `most` of the others."""
        others = self.rejected()
        parts = [self.reason, *(c.describe() for c in others[:most])]
        if len(others) > most:
            parts.append(f"... and {len(others) - most} more")
        return "; ".join(parts)


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def latest_chain(quotes: Iterable[OptionQuote], underlying: str, now: datetime | None = None
                 ) -> tuple[str | None, list[OptionQuote]]:
    """The records of the newest chain snapshot of `underlying` taken at or before `now` (by
    chain_as_of, then id), one per contract (its latest quote). A chain taken after `now` is not
    seen, so a backtest holding later records chooses as live did; records outside any chain are
    used only when no chain exists."""
    mine = [q for q in quotes if q.underlying == underlying]
    chained = [q for q in mine if q.chain_id is not None and q.chain_as_of is not None
               and (now is None or q.chain_as_of <= now)]
    if chained:
        newest = max(chained, key=lambda q: (q.chain_as_of, q.chain_id))
        cid: str | None = newest.chain_id
        mine = [q for q in chained if q.chain_id == cid]
    else:
        cid = None
        mine = [q for q in mine if q.chain_id is None]
    by_contract: dict[str, OptionQuote] = {}
    for q in mine:
        held = by_contract.get(q.contract)
        if held is None or (q.as_of, q.fetched_at) > (held.as_of, held.fetched_at):
            by_contract[q.contract] = q
    return cid, [by_contract[c] for c in sorted(by_contract)]


class ChainBook:
    """The chain records a desk has seen (from options.quotes, in event order), the newest
    `keep` snapshots per underlying: what choose_contract reads."""

    __slots__ = ("keep", "_chains")

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._chains: dict[str, dict[str, list[OptionQuote]]] = {}  # underlying -> chain id -> records

    def add(self, quote: OptionQuote) -> bool:
        """Folds one record; False when it belongs to no chain or to one already pruned."""
        if quote.chain_id is None or quote.chain_as_of is None:
            return False
        chains = self._chains.setdefault(quote.underlying, {})
        records = chains.get(quote.chain_id)
        if records is None:
            if len(chains) >= self.keep:
                oldest = min(chains, key=lambda c: (chains[c][0].chain_as_of, c))
                if (chains[oldest][0].chain_as_of, oldest) > (quote.chain_as_of, quote.chain_id):
                    return False
                del chains[oldest]
            records = chains[quote.chain_id] = []
        records.append(quote)
        return True

    def quotes(self, underlying: str) -> list[OptionQuote]:
        return [q for records in self._chains.get(underlying, {}).values() for q in records]

    def choose(self, *, underlying: str, action: str, now: datetime, config: OptionsConfig) -> ContractChoice:
        return choose_contract(self.quotes(underlying), underlying=underlying, action=action, now=now,
                               config=config)


def kind_of(quote: OptionQuote) -> str | None:
    """call or put: the record's own field, else its OCC symbol's (None: not an option)."""
    if quote.option_type is not None:
        return quote.option_type
    occ = parse_occ(quote.contract)
    return None if occ is None else occ.option_type


def judge(quote: OptionQuote, want: str, today: date, config: OptionsConfig
          ) -> tuple[Candidate, tuple[float, float, int] | None]:
    """One contract against the options block: the candidate, and its rank (lower is better:
    distance to the target delta, spread, then more open interest) when it passed."""
    c = quote.contract
    occ = parse_occ(c)
    if occ is None:
        return Candidate(c, "rejected", "not an OCC option symbol"), None
    try:
        expiry = date.fromisoformat(quote.expiration) if quote.expiration else occ.expiration
    except ValueError:
        return Candidate(c, "rejected", f"expiration {quote.expiration!r} unreadable"), None
    dte = (expiry - today).days
    bid, ask, delta, oi = quote.bid, quote.ask, quote.delta, quote.open_interest
    seen: dict[str, Any] = {"dte": dte, "open_interest": oi, "delta": delta if _finite(delta) else None}

    def reject(reason: str) -> tuple[Candidate, None]:
        return Candidate(c, "rejected", reason, **seen), None

    if kind_of(quote) != want:
        return reject(f"a {kind_of(quote)}, not a {want}")
    if not config.min_dte <= dte <= config.max_dte:
        return reject(f"{dte} days to expiry outside {config.min_dte}-{config.max_dte}")
    if bid is None or ask is None:
        return reject("no bid" if bid is None else "no ask")
    if not (_finite(bid) and _finite(ask)):
        return reject(f"bid/ask not a number ({bid!r}/{ask!r})")
    if bid <= 0:
        return reject("zero bid")
    if ask < bid:
        return reject(f"crossed quote (bid {bid:g} > ask {ask:g})")
    if delta is None:
        return reject("no delta (greeks missing)")
    if not _finite(delta) or abs(delta) > 1.0:
        return reject(f"delta {delta!r} is not between -1 and 1")
    if delta != 0 and (delta < 0) != (want == "put"):
        return reject(f"delta {delta:g} has the wrong sign for a {want}")
    if oi is not None and oi < 0:
        return reject(f"negative open interest {oi}")
    mid = (bid + ask) / 2.0
    spread = (ask - bid) / mid * 100.0
    seen["spread_pct"] = round(spread, 4)
    distance = abs(abs(delta) - config.target_delta)
    if distance > config.delta_band + 1e-12:
        return reject(f"|delta| {abs(delta):.3f} outside {config.target_delta:g} +- {config.delta_band:g}")
    if spread > config.max_spread_pct:
        return reject(f"spread {spread:.1f}% above {config.max_spread_pct:g}%")
    if config.min_open_interest > 0:
        if oi is None and not quote.modelled:
            return reject("open interest unknown")
        if oi is not None and oi < config.min_open_interest:
            return reject(f"open interest {oi} below {config.min_open_interest}")
    price = limit_price(bid, ask, mode=config.limit, penny=quote.penny_program, underlying=occ.underlying)
    seen["limit_price"] = price
    cap = config.max_premium_per_contract
    if cap is not None and price * CONTRACT_MULTIPLIER > cap:
        return reject(f"premium {price * CONTRACT_MULTIPLIER:.2f} per contract above {cap:g}")
    rank = (round(distance, 9), round(spread, 9), -(oi or 0))
    return Candidate(c, "passed", "", **seen), rank


def choose_contract(quotes: Iterable[OptionQuote], *, underlying: str, action: str, now: datetime,
                    config: OptionsConfig) -> ContractChoice:
    """The contract an entry on `underlying` buys: a call for BUY (delta nearest +target), a put for
    SELL (nearest -target), among those within every limit; ties go to the tighter spread, then
    the higher open interest, then the contract symbol."""
    want = option_type_for(action)
    cid, chain = latest_chain(quotes, underlying, now)
    if not chain:
        return ContractChoice(None, f"no option chain of {underlying} on the topic yet", (), cid)
    as_of = max(q.chain_as_of or q.fetched_at for q in chain)
    age = (now - as_of).total_seconds()
    if age > config.max_chain_age_s:
        return ContractChoice(None, f"chain {cid or underlying} is {age:.0f}s old (max "
                              f"{config.max_chain_age_s:g}s)", (), cid)
    if age < 0:
        return ContractChoice(None, f"chain {cid or underlying} is from the future ({-age:.0f}s ahead)",
                              (), cid)
    today = trading_day(now)
    judged = [judge(q, want, today, config) for q in chain if kind_of(q) in (want, None)]
    passed = sorted(((rank, cand.contract, cand) for cand, rank in judged if rank is not None),
                    key=lambda t: (t[0], t[1]))
    if not passed:
        why = f"no {want} of {underlying} passed ({len(judged)} considered"
        return ContractChoice(None, why + (")" if judged else f"; chain {cid} has none)"),
                              tuple(c for c, _ in judged), cid)
    best_rank, best_contract, best = passed[0]
    out: list[Candidate] = []
    for cand, rank in judged:
        if rank is None:
            out.append(cand)
        elif cand.contract == best_contract:
            out.append(_with(cand, "chosen", _why_won(best, len(passed), config)))
        else:
            out.append(_with(cand, "outranked", _why_lost(cand, rank, best, best_rank)))
    quote = next(q for q in chain if q.contract == best_contract)
    reason = f"chose {best_contract}: {_why_won(best, len(passed), config)}"
    return ContractChoice(quote, reason, tuple(out), cid, best.limit_price)


def _with(cand: Candidate, verdict: str, reason: str) -> Candidate:
    return Candidate(cand.contract, verdict, reason, cand.delta, cand.spread_pct, cand.open_interest,
                     cand.dte, cand.limit_price)


def _why_won(best: Candidate, passed: int, config: OptionsConfig) -> str:
    return (f"delta {best.delta:g} nearest {config.target_delta:g} of {passed} within limits, spread "
            f"{best.spread_pct:.1f}%, open interest {best.open_interest}, {best.dte} days, limit "
            f"{best.limit_price:.2f}")


def _why_lost(cand: Candidate, rank: tuple[float, float, int], best: Candidate,
              best_rank: tuple[float, float, int]) -> str:
    if rank[0] != best_rank[0]:
        return f"delta {cand.delta:g} farther from target than {best.contract}'s {best.delta:g}"
    if rank[1] != best_rank[1]:
        return f"same delta distance, wider spread {cand.spread_pct:.1f}% vs {best.spread_pct:.1f}%"
    if rank[2] != best_rank[2]:
        return f"same delta and spread, less open interest {cand.open_interest} vs {best.open_interest}"
    return f"a full tie with {best.contract}: the first symbol wins"
