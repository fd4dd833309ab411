"""The broker's truth as one account's desk sees it: the latest snapshot records in event-time order,
what the gates read from them, and the rules that watch positions the pipeline did not open (plus
the event-time order shared with the operator's control records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from schemas.records import BrokerAccount, BrokerPosition, OptionQuote
from trading.calendar import SessionCalendar, trading_day
from trading.clock import MINUTE, floor_minute
from trading.options import parse_occ

MANAGE_EXTERNAL = ("off", "monitor", "exit")
_EPS = 1e-9


def event_minute(as_of: datetime) -> datetime:
    """The bar minute whose decisions (made at its end) are the first to see a record of `as_of`.

    A decision on bar M is made at M + 1 minute, so a snapshot taken at or before then is applied
    before it: the minute is ceil(as_of) - 1. Live and backtest order snapshots with bars by it."""
    floored = floor_minute(as_of)
    return floored - MINUTE if floored == as_of else floored


BROKER_KIND = -1  # broker records sort before the bars (0) and signals (1) of their minute


def broker_key(record: Any) -> tuple[datetime, int, str, int, str]:
    """The canonical decision order of a broker record or option quote: before the bars of its
    event minute; among themselves by time, then positions, account records, quotes, then key."""
    if isinstance(record, BrokerPosition):
        name = f"0|{record.account}|{record.symbol}"
    elif isinstance(record, BrokerAccount):  # after its snapshot's positions: it closes the snapshot
        name = f"1|{record.account}"
    elif isinstance(record, OptionQuote):
        name = f"2|{record.contract}"
    else:  # an operator's control event
        name = f"3|{record.account}|{record.id}"
    at = event_time(record)
    return (event_minute(at), BROKER_KIND, f"{at.isoformat()}|{name}", 0, "")


def event_time(record: Any) -> datetime:
    """The time a broker record (as_of) or a control event (at) speaks for."""
    as_of = getattr(record, "as_of", None)
    return as_of if as_of is not None else record.at


def decided_at(record: Any) -> datetime:
    """When a broker or control record is decided on in bar time: the end of its event minute."""
    return event_minute(event_time(record)) + MINUTE


@dataclass(frozen=True, slots=True)
class ExternalRules:
    """How positions the pipeline did not open are treated (per account)."""

    manage: str = "monitor"  # off: ignored; monitor: watched, marked, reported; exit: the rules below
    stop_loss_pct: float = 0.5  # on unrealized P&L as a fraction of cost: 0.5 = -50%
    take_profit_pct: float = 1.0  # +100%
    trailing_stop_pct: float | None = None  # give-back from the best unrealized P&L, in points of it
    option_close_days_before_expiry: int = 1
    flat_at_close: bool = False  # equities only

    def __post_init__(self) -> None:
        if self.manage not in MANAGE_EXTERNAL:
            raise ValueError(f"manage_external must be one of {MANAGE_EXTERNAL}, not {self.manage!r}")
        if self.stop_loss_pct <= 0 or self.take_profit_pct <= 0:
            raise ValueError("external_stop_loss_pct and external_take_profit_pct must be positive")
        if self.option_close_days_before_expiry < 0:
            raise ValueError("option_close_days_before_expiry must be >= 0")


class BrokerView:
    """The latest account record and the open positions at the broker, applied in event-time order
    (an older record than the one held for its key is ignored: redeliveries, a rebuild's overlap)."""

    __slots__ = ("account", "positions", "quotes", "_as_of", "peaks")

    def __init__(self) -> None:
        self.account: BrokerAccount | None = None
        self.positions: dict[str, BrokerPosition] = {}  # symbol -> open position (qty != 0)
        self.quotes: dict[str, OptionQuote] = {}  # contract -> latest quote
        self._as_of: dict[str, datetime] = {}  # symbol -> as_of of the latest record applied
        self.peaks: dict[str, float] = {}  # symbol -> best unrealized P&L fraction (trailing stops)

    def apply_account(self, record: BrokerAccount) -> bool:
        held = self.account
        if held is not None and record.as_of < held.as_of:
            return False
        self.account = record
        return True

    def apply_position(self, record: BrokerPosition) -> BrokerPosition | None | bool:
        """Folds a position record; False if it is older than the one held, else the previous one."""
        last = self._as_of.get(record.symbol)
        if last is not None and record.as_of < last:
            return False
        self._as_of[record.symbol] = record.as_of
        prev = self.positions.get(record.symbol)
        if abs(record.qty) <= _EPS:
            self.positions.pop(record.symbol, None)
            self.peaks.pop(record.symbol, None)
        else:
            self.positions[record.symbol] = record
        return prev

    def apply_quote(self, quote: OptionQuote) -> bool:
        held = self.quotes.get(quote.contract)
        if held is not None and quote.as_of < held.as_of:
            return False
        self.quotes[quote.contract] = quote
        return True

    # -- what the gates read --------------------------------------------------------------------

    def seen_at(self, symbol: str) -> datetime | None:
        """as_of of the latest record of `symbol` applied (None: never reported)."""
        return self._as_of.get(symbol)

    def age_s(self, now: datetime) -> float | None:
        return None if self.account is None else (now - self.account.as_of).total_seconds()

    def held(self, symbol: str) -> BrokerPosition | None:
        return self.positions.get(symbol)

    def buying_power(self, *, option: bool = False) -> float:
        acct = self.account
        if acct is None:
            return 0.0
        if option and acct.options_buying_power is not None:
            return acct.options_buying_power
        return acct.buying_power

    def mark(self, pos: BrokerPosition) -> tuple[float | None, str]:
        """The position's latest price and where it came from: an option quote newer than the
        snapshot (mid), else the broker's own mark."""
        quote = self.quotes.get(pos.symbol)
        if quote is not None and quote.as_of >= pos.as_of and quote.mid is not None:
            return quote.mid, f"quote {quote.as_of:%H:%M:%S}"
        return pos.current_price, "broker"

    def unrealized_pct(self, pos: BrokerPosition) -> float | None:
        """Unrealized P&L as a fraction of cost at the latest mark (sign-aware for shorts)."""
        price, _ = self.mark(pos)
        if price is None or pos.avg_entry_price <= 0:
            return pos.unrealized_plpc
        side = 1.0 if pos.qty > 0 else -1.0
        return (price - pos.avg_entry_price) / pos.avg_entry_price * side

    def exposure(self, symbols: Iterable[str] = ()) -> float:
        """Market value held at the broker, plus `symbols`' (pending entries) counted by the caller."""
        return sum(abs(p.market_value if p.market_value is not None else p.qty * p.avg_entry_price
                       * p.multiplier) for p in self.positions.values())

    def unrealized_total(self) -> float:
        return sum(p.unrealized_pl or 0.0 for p in self.positions.values())

    def to_state(self) -> dict[str, Any]:
        return {
            "account": None if self.account is None else self.account.to_avro(),
            "positions": [p.to_avro() for _, p in sorted(self.positions.items())],
        }


def sessions_until(calendar: SessionCalendar, today: date, expiry: date, limit: int = 30) -> int:
    """Trading sessions after `today` up to and including `expiry` (0 on the expiry day itself)."""
    n = 0
    day = today + timedelta(days=1)
    while day <= expiry and n <= limit:
        try:
            if calendar.session(day) is not None:
                n += 1
        except LookupError:  # beyond the calendar: count weekdays
            if day.weekday() < 5:
                n += 1
        day += timedelta(days=1)
    return n


def external_exit_reason(view: BrokerView, pos: BrokerPosition, rules: ExternalRules,
                         calendar: SessionCalendar, now: datetime, flatten: bool) -> tuple[str, str] | None:
    """(rule, detail) if an external position must close now under `rules`, else None."""
    if rules.manage != "exit":
        return None
    occ = parse_occ(pos.symbol) if pos.asset_class == "us_option" else None
    if occ is not None:
        left = sessions_until(calendar, trading_day(now), occ.expiration)
        if trading_day(now) > occ.expiration or left <= rules.option_close_days_before_expiry:
            return ("option_expiry", f"{left} trading day(s) to expiry {occ.expiration}, close at "
                                     f"{rules.option_close_days_before_expiry}")
    pct = view.unrealized_pct(pos)
    if pct is not None:
        peak = max(view.peaks.get(pos.symbol, pct), pct)
        view.peaks[pos.symbol] = peak
        if pct <= -rules.stop_loss_pct:
            return ("stop_loss", f"unrealized {pct:+.1%} at or below -{rules.stop_loss_pct:.0%}")
        if pct >= rules.take_profit_pct:
            return ("take_profit", f"unrealized {pct:+.1%} at or above +{rules.take_profit_pct:.0%}")
        trail = rules.trailing_stop_pct
        if trail is not None and peak > 0 and peak - pct >= trail:
            return ("trailing_stop", f"unrealized {pct:+.1%} gave back {peak - pct:.1%} from {peak:+.1%}")
    if flatten and rules.flat_at_close and occ is None and pos.asset_class == "us_equity":
        return ("end_of_session", "flat before the close (external equities)")
    return None


def describe_position(pos: BrokerPosition | None) -> str:
    if pos is None:
        return "flat"
    pl = "" if pos.unrealized_pl is None else f", unrealized {pos.unrealized_pl:+.2f}"
    return f"{pos.qty:g} @ {pos.avg_entry_price:.4f} ({pos.asset_class}, {pos.origin}{pl})"
