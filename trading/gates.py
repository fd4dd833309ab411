"""Risk gates: an account's limits, its state and the ordered evaluation; every gate is recorded so a
SKIPPED execution explains itself, and entry-only gates never block an exit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, NamedTuple, Self

from schemas.records import GateResult
from trading.broker import BrokerView, ExternalRules
from trading.calendar import NEW_YORK, SessionCalendar, trading_day
from trading.option_chain import INSTRUMENTS, OptionsConfig
from trading.options import is_option
from trading.positions import ExitRules, PositionBook

Mode = Literal["simulate", "alpaca-paper"]
MODES: tuple[str, ...] = ("simulate", "alpaca-paper")
PROTECTIVE_ORDERS: tuple[str, ...] = ("none", "bracket")

#: Gate names in evaluation order (the order of Execution.gates).
GATE_ORDER: tuple[str, ...] = (
    "confidence",
    "session",
    "bar_age",
    "shorting",
    "trades_per_day",
    "open_positions",
    "notional_per_trade",
    "notional_per_account",
    "already_held",
    "daily_loss",
    "buying_power",
    "submit_rate",
)

_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """One account's mode and limits. Money in USD, percentages as fractions."""

    name: str
    mode: Mode = "simulate"
    starting_cash: float = 100_000.0
    notional_per_trade: float = 5_000.0  # the size of an entry, before whole-share rounding
    fractional: bool = False  # whole shares unless the account allows fractional quantities
    min_confidence: float = 0.70
    allow_short: bool = False
    max_trades_per_day: int = 20
    max_open_positions: int = 5
    max_notional_per_trade: float = 10_000.0
    max_notional_account: float = 50_000.0
    daily_loss_limit: float = 2_000.0  # realized loss that trips the kill switch for the day
    max_submits: int = 10  # submit-rate limit: at most this many orders ...
    submit_window_s: float = 60.0  # ... in this many seconds
    max_bar_age_s: float = 120.0
    session_open_delay_min: int = 5  # 09:30 open -> entries from 09:35
    session_close_lead_min: int = 15  # 16:00 close -> no entries from 15:45 (12:45 on early closes)
    slippage_bps: float = 5.0
    exits: ExitRules = field(default_factory=ExitRules)
    # -- alpaca-paper: the account's own connection, and the broker's truth --------------------
    credentials_file: str | None = None  # dotenv file with its APCA_API_KEY_ID / _SECRET_KEY
    trading_url: str | None = None  # default: ALPACA_TRADING_URL, else Alpaca paper
    # gates read the broker's snapshots: default for alpaca-paper; true on a simulate account makes
    # it a shadow of the real account (simulated orders, gates on the broker's state)
    broker_truth: bool | None = None
    max_broker_state_age_s: float = 90.0  # an older snapshot makes entries fail closed
    cash_drift_tolerance: float = 1.0  # USD of unexplained cash change reported by reconcile
    protective_orders: str = "none"  # "bracket": entries carry their stop and target at Alpaca
    manage_external: str = "monitor"  # positions not opened by the pipeline: off | monitor | exit
    external_stop_loss_pct: float = 0.5
    external_take_profit_pct: float = 1.0
    external_trailing_stop_pct: float | None = None
    option_close_days_before_expiry: int = 1
    external_flat_at_close: bool = False
    # -- what an entry buys: shares, or (instrument "option") a call for BUY / a put for SELL chosen
    # by the options block (trading.option_chain); an option account without one gets its defaults
    instrument: str = "stock"
    options: OptionsConfig | None = None

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"account name {self.name!r}: must be non-empty, without ':'")
        if self.mode not in MODES:
            raise ValueError(f"account {self.name}: mode {self.mode!r} is not one of {MODES}")
        for attr in ("starting_cash", "notional_per_trade", "max_notional_per_trade",
                     "max_notional_account", "daily_loss_limit", "submit_window_s", "max_bar_age_s"):
            if getattr(self, attr) <= 0:
                raise ValueError(f"account {self.name}: {attr} must be positive")
        if self.slippage_bps < 0:
            raise ValueError(f"account {self.name}: slippage_bps must be >= 0")
        if self.protective_orders not in PROTECTIVE_ORDERS:
            raise ValueError(f"account {self.name}: protective_orders {self.protective_orders!r} is not "
                             f"one of {PROTECTIVE_ORDERS}")
        if self.max_broker_state_age_s <= 0:
            raise ValueError(f"account {self.name}: max_broker_state_age_s must be positive")
        try:
            _ = self.external  # validates the external-exit rules
        except ValueError as exc:
            raise ValueError(f"account {self.name}: {exc}") from None
        if self.instrument not in INSTRUMENTS:
            raise ValueError(f"account {self.name}: instrument {self.instrument!r} is not one of "
                             f"{INSTRUMENTS}")
        if self.options is not None and not isinstance(self.options, OptionsConfig):
            raise ValueError(f"account {self.name}: options must be an options block, not "
                             f"{type(self.options).__name__}")
        if self.instrument == "option":
            if self.options is None:
                object.__setattr__(self, "options", OptionsConfig())
            if self.uses_broker:  # the live stage does not read chains yet: no broker option account
                raise ValueError(f"account {self.name}: instrument 'option' needs mode 'simulate' "
                                 "without broker_truth for now")

    @property
    def uses_broker(self) -> bool:
        """Whether the gates read the broker's snapshots rather than the desk's own book."""
        return self.mode == "alpaca-paper" if self.broker_truth is None else self.broker_truth

    @property
    def external(self) -> ExternalRules:
        return ExternalRules(self.manage_external, self.external_stop_loss_pct,
                             self.external_take_profit_pct, self.external_trailing_stop_pct,
                             self.option_close_days_before_expiry, self.external_flat_at_close)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountConfig:
        data = dict(data)
        exits = data.pop("exits", None)
        options = data.get("options")
        if options is not None and not isinstance(options, OptionsConfig):
            try:
                data["options"] = OptionsConfig.from_dict(options)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"account {data.get('name')!r}: {exc}") from None
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"account {data.get('name')!r}: unknown fields {sorted(unknown)}")
        if isinstance(exits, dict):
            data["exits"] = ExitRules(**exits)
        return cls(**data)


LARGE_100K = AccountConfig(name="large-100k")
TINY_1K = AccountConfig(
    name="tiny-1k",
    starting_cash=1_000.0,
    notional_per_trade=250.0,
    fractional=True,
    min_confidence=0.60,
    max_trades_per_day=5,
    max_open_positions=3,
    max_notional_per_trade=300.0,
    max_notional_account=800.0,
    daily_loss_limit=50.0,
    max_submits=5,
)
DEFAULT_ACCOUNTS: tuple[AccountConfig, ...] = (LARGE_100K, TINY_1K)


def entry_window(
    config: AccountConfig, calendar: SessionCalendar, day: date
) -> tuple[datetime, datetime] | None:
    """[start, end) of entries on `day`: open + delay to close - lead, or None on a closed day."""
    session = calendar.session(day)
    if session is None:
        return None
    open_, close = session
    return (
        open_ + timedelta(minutes=config.session_open_delay_min),
        close - timedelta(minutes=config.session_close_lead_min),
    )


class AccountState:
    """What an account's gates need to remember; round-trips through to_state()/from_state()."""

    __slots__ = ("day", "trades_today", "realized_today", "realized_total", "killed", "submits", "book")

    def __init__(self, exits: ExitRules | None = None) -> None:
        self.day: date | None = None
        self.trades_today = 0
        self.realized_today = 0.0
        self.realized_total = 0.0
        self.killed = False  # the kill switch: no new entries until the next trading day
        self.submits: deque[float] = deque()  # epoch seconds of recent order submissions
        self.book = PositionBook(exits or ExitRules())

    def roll(self, day: date) -> None:
        """Start a new trading day's counters (the kill switch resets with them)."""
        if day != self.day:
            if self.day is not None and day < self.day:
                return  # a decision stamped before the current day: keep today's counters
            self.day = day
            self.trades_today = 0
            self.realized_today = 0.0
            self.killed = False

    def record_submit(self, at: datetime) -> None:
        self.submits.append(at.timestamp())

    def submits_within(self, now: datetime, window_s: float) -> int:
        horizon = now.timestamp() - window_s
        submits = self.submits
        while submits and submits[0] <= horizon:
            submits.popleft()
        return len(submits)

    def realize(self, pnl: float, config: AccountConfig) -> None:
        self.realized_today += pnl
        self.realized_total += pnl
        if self.realized_today <= -config.daily_loss_limit:
            self.killed = True

    def buying_power(self, config: AccountConfig) -> float:
        return config.starting_cash + self.realized_total - self.book.exposure()

    def to_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "day": None if self.day is None else self.day.isoformat(),
            "trades_today": self.trades_today,
            "realized_today": self.realized_today,
            "realized_total": self.realized_total,
            "killed": self.killed,
            "submits": list(self.submits),
            "book": self.book.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], exits: ExitRules | None = None) -> Self:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown AccountState version {state.get('version')!r}")
        st = cls(exits)
        st.day = None if state["day"] is None else date.fromisoformat(state["day"])
        st.trades_today = int(state["trades_today"])
        st.realized_today = float(state["realized_today"])
        st.realized_total = float(state["realized_total"])
        st.killed = bool(state["killed"])
        st.submits = deque(float(t) for t in state["submits"])
        st.book = PositionBook.from_state(state["book"], exits or ExitRules())
        return st


class OrderPlan(NamedTuple):
    """An order the desk wants to place, before the gates (a tuple: built once per decision)."""

    symbol: str
    action: str  # BUY or SELL
    intent: str  # entry or exit
    confidence: float
    bar_ts: datetime
    price: float  # the reference price (the bar close)
    qty: float

    @property
    def notional(self) -> float:
        return abs(self.qty) * self.price


# Building a frozen dataclass sets each field through object.__setattr__; a decision records twelve
# gates, so (as the FeatureEngine does for Features) they are filled in a mutable twin of
# identical layout whose class is then switched: the result is an ordinary frozen GateResult.
_GateBuilder: Any = make_dataclass(
    "_GateBuilder", [(f.name, f.type) for f in fields(GateResult)], slots=True, eq=False, repr=False,
    match_args=False,
)


def _gate(name: str, passed: bool, value: float | str | None, limit: float | str | None,
          reason: str) -> GateResult:
    g = _GateBuilder(name, passed, value, limit, reason)
    g.__class__ = GateResult
    result: GateResult = g
    return result


_SKIPPED_FOR_EXIT = "skipped: exits are never blocked"
_EXIT_GATES = tuple(_gate(name, True, None, None, _SKIPPED_FOR_EXIT) for name in GATE_ORDER)
_EXIT_GATES_BROKER = (_gate("broker_state", True, None, None, _SKIPPED_FOR_EXIT), *_EXIT_GATES)


class GateEvaluator:
    """The gates of one account, with its limits and the day's entry window precomputed."""

    __slots__ = ("config", "calendar", "_limits", "_day_range", "_window", "_window_limit",
                 "_window_error", "_local_key", "_local_text")

    def __init__(self, config: AccountConfig, calendar: SessionCalendar) -> None:
        self.config = config
        self.calendar = calendar
        c = config
        self._limits = (float(c.min_confidence), float(c.max_bar_age_s),
                        "allowed" if c.allow_short else "long only", float(c.max_trades_per_day),
                        float(c.max_open_positions), float(c.max_notional_per_trade),
                        float(c.max_notional_account), -float(c.daily_loss_limit), float(c.max_submits),
                        f"submits in the last {c.submit_window_s:g}s below maximum")
        self._day_range: tuple[datetime, datetime] | None = None  # UTC [start, end) of the cached day
        self._window: tuple[datetime, datetime] | None = None
        self._window_limit: str | None = None
        self._window_error: str | None = None
        self._local_key = -1
        self._local_text = ""

    def _local(self, now: datetime) -> str:
        key = int(now.timestamp())
        if key != self._local_key:
            local = now.astimezone(NEW_YORK)
            self._local_text = (f"{local.year:04d}-{local.month:02d}-{local.day:02d} "
                                f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} ET")
            self._local_key = key
        return self._local_text

    def _load_day(self, now: datetime) -> None:
        day = trading_day(now)
        start = datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)
        nxt = day + timedelta(days=1)
        self._day_range = (start, datetime(nxt.year, nxt.month, nxt.day, tzinfo=NEW_YORK))
        self._window = None
        self._window_error = None
        try:
            window = entry_window(self.config, self.calendar, day)
        except LookupError as exc:
            self._window_limit = None
            self._window_error = str(exc)
            return
        if window is None:
            self._window_limit = "closed"
            self._window_error = f"{day} is not a trading day"
            return
        self._window = window
        self._window_limit = (f"{window[0].astimezone(NEW_YORK):%H:%M}-"
                              f"{window[1].astimezone(NEW_YORK):%H:%M} ET")

    def session(self, now: datetime) -> GateResult:
        rng = self._day_range
        if rng is None or not rng[0] <= now < rng[1]:
            self._load_day(now)
        window = self._window
        local = self._local(now)
        if window is None:
            return _gate("session", False, local, self._window_limit, self._window_error or "")
        if window[0] <= now < window[1]:
            return _gate("session", True, local, self._window_limit, "inside the entry window")
        return _gate("session", False, local, self._window_limit, "outside the entry window")

    def evaluate(self, state: AccountState, plan: OrderPlan, now: datetime,
                 broker: BrokerView | None = None, in_flight: float = 0.0) -> list[GateResult]:
        """Every gate in GATE_ORDER; entry-only gates are skipped (passed) for exits.

        With `broker` (an alpaca-paper account on the broker's truth), open positions, exposure,
        already held and buying power read its latest snapshot, buying power less `in_flight`
        (the notional of entries decided after that snapshot), and a first gate, broker_state,
        fails entries closed when the snapshot is missing, stale or the account is blocked.
        The caller rolls `state` to the trading day of `now` first (see AccountDesk).
        """
        if plan.intent != "entry":  # the same gates every time: frozen records, shared
            return list(_EXIT_GATES_BROKER if broker is not None else _EXIT_GATES)
        if broker is not None:
            return self._evaluate_broker(state, plan, now, broker, in_flight)
        config = self.config
        (min_conf, max_age, short_limit, max_trades, max_open, max_trade, max_account, loss_limit,
         max_submits, rate_ok) = self._limits
        conf = float(plan.confidence)
        age = (now - plan.bar_ts).total_seconds()
        if age < 0:
            age_reason = "bar from the future"
        elif age <= max_age:
            age_reason = "bar fresh"
        else:
            age_reason = "bar too old"
        short_blocked = plan.action == "SELL" and not config.allow_short
        trades = float(state.trades_today)
        book = state.book
        open_count = float(book.count())
        notional = plan.notional
        trade_ok = 0.0 < notional <= max_trade
        open_exposure = book.exposure()
        exposure = open_exposure + notional
        held = book.get(plan.symbol)
        killed = state.killed or state.realized_today <= loss_limit
        power = config.starting_cash + state.realized_total - open_exposure  # = state.buying_power()
        recent = float(state.submits_within(now, config.submit_window_s))
        return [
            _gate("confidence", conf >= min_conf, conf, min_conf,
                  "confidence >= minimum" if conf >= min_conf else "confidence below minimum"),
            self.session(now),
            _gate("bar_age", 0.0 <= age <= max_age, age, max_age, age_reason),
            _gate("shorting", not short_blocked, plan.action, short_limit,
                  "short entry not allowed" if short_blocked else "ok"),
            _gate("trades_per_day", trades < max_trades, trades, max_trades,
                  "trades today below maximum" if trades < max_trades else "max trades per day reached"),
            _gate("open_positions", open_count < max_open, open_count, max_open,
                  "open positions below maximum" if open_count < max_open else "max open positions reached"),
            _gate("notional_per_trade", trade_ok, notional, max_trade,
                  "ok" if trade_ok else "zero quantity" if notional <= 0 else "trade notional above maximum"),
            _gate("notional_per_account", exposure <= max_account, exposure, max_account,
                  "ok" if exposure <= max_account else "account exposure would exceed maximum"),
            _gate("already_held", held is None, "flat" if held is None else held.describe(),
                  "one entry per symbol", "ok" if held is None else f"{plan.symbol} already held"),
            _gate("daily_loss", not killed, float(state.realized_today), loss_limit,
                  "kill switch on: daily loss limit hit" if killed else "ok"),
            _gate("buying_power", notional <= power, notional, float(power),
                  "ok" if notional <= power else "insufficient buying power"),
            _gate("submit_rate", recent < max_submits, recent, max_submits,
                  rate_ok if recent < max_submits else "submit rate limit reached"),
        ]


    def _evaluate_broker(self, state: AccountState, plan: OrderPlan, now: datetime, broker: BrokerView,
                         in_flight: float) -> list[GateResult]:
        """The same gates, on the broker's positions and buying power (see evaluate)."""
        gates = self.evaluate(state, plan, now)  # the book-only gates keep their meaning
        config = self.config
        book = state.book
        _, _, _, _, max_open, _, max_account, _, _, _ = self._limits
        pending = [p for p in book if p.symbol not in broker.positions]
        open_count = float(len(broker.positions) + len(pending))
        notional = plan.notional
        exposure = broker.exposure() + sum(p.qty * p.avg_price for p in pending) + notional
        mine = book.get(plan.symbol)
        theirs = broker.held(plan.symbol)
        option = is_option(plan.symbol)
        power = broker.buying_power(option=option) - in_flight
        if mine is not None:
            held_value = mine.describe()
        elif theirs is not None:
            held_value = f"{theirs.qty:g} held at the broker ({theirs.origin})"
        else:
            held_value = "flat"
        held = mine is not None or theirs is not None
        by_name = {g.name: i for i, g in enumerate(gates)}
        gates[by_name["open_positions"]] = _gate(
            "open_positions", open_count < max_open, open_count, max_open,
            "open positions at the broker below maximum" if open_count < max_open
            else "max open positions reached (broker)")
        gates[by_name["notional_per_account"]] = _gate(
            "notional_per_account", exposure <= max_account, exposure, max_account,
            "ok" if exposure <= max_account else "account exposure at the broker would exceed maximum")
        gates[by_name["already_held"]] = _gate(
            "already_held", not held, held_value, "one entry per symbol",
            "ok" if not held else f"{plan.symbol} already held")
        what = "options buying power" if option else "buying power"
        gates[by_name["buying_power"]] = _gate(
            "buying_power", notional <= power, notional, float(power),
            f"ok ({what} at the broker less {in_flight:.2f} in flight)" if notional <= power
            else f"insufficient {what} at the broker")
        age = broker.age_s(now)
        acct = broker.account
        limit = float(config.max_broker_state_age_s)
        # first: when the broker's state cannot be trusted, that is the reason an entry is skipped
        if acct is None or age is None:
            first = _gate("broker_state", False, None, limit, "no broker snapshot yet")
        elif age > limit:
            first = _gate("broker_state", False, age, limit,
                          f"stale broker state: last snapshot {age:.0f}s old")
        elif acct.trading_blocked or acct.status.upper() != "ACTIVE":
            first = _gate("broker_state", False, age, limit,
                          f"account {acct.status}{' (trading blocked)' if acct.trading_blocked else ''}")
        else:
            first = _gate("broker_state", True, age, limit, "broker snapshot fresh")
        gates.insert(0, first)
        return gates


def evaluate_gates(
    config: AccountConfig,
    state: AccountState,
    plan: OrderPlan,
    now: datetime,
    calendar: SessionCalendar,
) -> list[GateResult]:
    """Every gate in GATE_ORDER for this plan (a one-off GateEvaluator; desks keep theirs)."""
    return GateEvaluator(config, calendar).evaluate(state, plan, now)


def first_failure(gates: list[GateResult]) -> GateResult | None:
    for g in gates:
        if not g.passed:
            return g
    return None


def failure_reason(gates: list[GateResult]) -> str | None:
    g = first_failure(gates)
    return None if g is None else f"{g.name}: {g.reason}"

