"""Record types of the topic contract: one frozen dataclass per `.avsc`, with its key, so a field
rename is one change here and in the schema file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

BAR_SOURCES = frozenset({"live", "updated", "backfill", "replay"})
ACTIONS = frozenset({"BUY", "SELL"})
EXECUTION_STATUSES = ("SIMULATED", "SKIPPED", "SUBMITTED", "FILLED", "FAILED")
SENTIMENT_LABELS = frozenset({"positive", "negative", "neutral"})
MARKET_KEY = "_market"  # news.scored key of an item with no inferred ticker


class Record:
    """Base of every contract record: Avro dict conversion and the message key."""

    __slots__ = ()
    SCHEMA: ClassVar[str]
    _FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_FIELDS_CACHE")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._FIELDS_CACHE = names  # type: ignore[attr-defined]
        return names

    def to_avro(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        return cls(**{name: data[name] for name in cls.field_names() if name in data})

    def key(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Bar(Record):
    SCHEMA: ClassVar[str] = "bar"
    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    trade_count: int | None = None
    vwap: float | None = None
    source: str = "live"
    revision: int = 0

    def key(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class NewsItem(Record):
    SCHEMA: ClassVar[str] = "news_item"
    id: str
    feed: str
    title: str
    summary: str
    link: str | None
    published: datetime
    fetched_at: datetime
    published_estimated: bool = False

    def key(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class ScoredNews(Record):
    SCHEMA: ClassVar[str] = "scored_news"
    id: str
    ticker: str
    tickers: list[str]
    label: str
    score: float
    model: str
    published: datetime

    def key(self) -> str:
        return self.ticker


@dataclass(frozen=True, slots=True)
class Features(Record):
    SCHEMA: ClassVar[str] = "features"
    symbol: str
    ts: datetime
    close: float
    sma_20: float | None
    sma_50: float | None
    volume_current: int
    volume_avg_20: float | None
    volume_ratio: float | None
    volume_surge: bool | None
    rsi_14: float | None
    macd: float | None
    macd_signal: float | None
    macd_hist: float | None
    bb_upper: float | None
    bb_middle: float | None
    bb_lower: float | None
    bars_seen: int
    revision: int = 0

    def key(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class Recommendation(Record):
    SCHEMA: ClassVar[str] = "recommendation"
    id: str
    symbol: str
    ts: datetime
    action: str
    base_confidence: float
    volume_multiplier: float
    confidence: float
    sentiment: float | None
    reason: str
    features: dict[str, float | None]
    strategy_version: str

    def key(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    passed: bool
    value: float | str | None
    limit: float | str | None
    reason: str

    def to_avro(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "limit": self.limit,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Execution(Record):
    SCHEMA: ClassVar[str] = "execution"
    recommendation_id: str
    account: str
    symbol: str
    action: str
    status: str
    gates: list[GateResult]
    failure_reason: str | None
    qty: float | None
    price: float | None
    bar_used_ts: datetime | None
    broker_order_id: str | None
    client_order_id: str | None
    mode: str
    decided_at: datetime
    intent: str = "entry"

    def key(self) -> str:
        return f"{self.account}:{self.recommendation_id}"

    def to_avro(self) -> dict[str, Any]:
        data = Record.to_avro(self)
        data["gates"] = [g.to_avro() for g in self.gates]
        return data

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        data["gates"] = [GateResult(**g) for g in data["gates"]]
        return super(Execution, cls).from_avro(data)


@dataclass(frozen=True, slots=True)
class Position(Record):
    SCHEMA: ClassVar[str] = "position"
    account: str
    symbol: str
    qty: float
    avg_price: float
    opened_at: datetime
    stop: float | None
    target: float | None
    status: str
    realized_pnl: float
    updated_at: datetime
    exit_reason: str | None = None

    def key(self) -> str:
        return f"{self.account}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class WatchlistEntry(Record):
    SCHEMA: ClassVar[str] = "watchlist_entry"
    symbol: str
    ts: datetime
    score: float
    rank: int
    volume_ratio: float | None
    momentum: float | None
    sentiment: float | None
    reasons: list[str] = field(default_factory=list)

    def key(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    SCHEMA: ClassVar[str] = "dead_letter"
    topic: str
    partition: int | None
    offset: int | None
    original_key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    error: str
    error_type: str
    stage: str
    failed_at: datetime

    def key(self) -> str:
        return self.original_key.decode("utf-8", "replace") if self.original_key else ""


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An open order at Alpaca (nested in BrokerAccount); a bracket leg names its parent."""

    id: str
    client_order_id: str | None
    symbol: str
    asset_class: str
    side: str
    qty: float | None
    filled_qty: float
    order_type: str
    order_class: str
    status: str
    limit_price: float | None = None
    stop_price: float | None = None
    parent_id: str | None = None
    submitted_at: datetime | None = None

    def to_avro(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class BrokerAccount(Record):
    SCHEMA: ClassVar[str] = "broker_account"
    account: str
    as_of: datetime
    status: str
    currency: str
    cash: float
    buying_power: float
    options_buying_power: float | None
    equity: float
    last_equity: float | None
    long_market_value: float | None
    short_market_value: float | None
    options_approved_level: int | None
    trading_blocked: bool
    open_orders: list[BrokerOrder] = field(default_factory=list)
    trigger: str = "poll"

    def key(self) -> str:
        return self.account

    def to_avro(self) -> dict[str, Any]:
        data = Record.to_avro(self)
        data["open_orders"] = [o.to_avro() for o in self.open_orders]
        return data

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        data["open_orders"] = [BrokerOrder(**o) for o in data.get("open_orders") or ()]
        return super(BrokerAccount, cls).from_avro(data)


ASSET_CLASSES = frozenset({"us_equity", "us_option", "crypto"})
ORIGINS = frozenset({"pipeline", "external"})


@dataclass(frozen=True, slots=True)
class BrokerPosition(Record):
    SCHEMA: ClassVar[str] = "broker_position"
    account: str
    symbol: str
    as_of: datetime
    asset_class: str
    qty: float  # signed: a short is negative; 0 once closed
    avg_entry_price: float
    market_value: float | None
    cost_basis: float | None
    unrealized_pl: float | None
    unrealized_plpc: float | None
    current_price: float | None
    origin: str
    underlying: str | None = None
    expiration: str | None = None  # ISO date
    option_type: str | None = None  # call or put
    strike: float | None = None
    multiplier: float = 1.0

    def key(self) -> str:
        return f"{self.account}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class OptionQuote(Record):
    SCHEMA: ClassVar[str] = "option_quote"
    contract: str
    underlying: str
    as_of: datetime
    bid: float | None
    ask: float | None
    bid_size: float | None
    ask_size: float | None
    last: float | None
    iv: float | None
    delta: float | None
    gamma: float | None
    theta: float | None
    vega: float | None
    source: str  # quote | snapshot | chain (a chain snapshot) | model (trading.option_pricing)
    fetched_at: datetime
    # v2: what a chain snapshot adds, so a backtest over the topic chooses the same contract
    expiration: str | None = None  # ISO date
    strike: float | None = None
    option_type: str | None = None  # call or put
    open_interest: int | None = None
    penny_program: bool | None = None  # Alpaca's ppind; None: unknown (the coarser ticks apply)
    underlying_price: float | None = None
    chain_id: str | None = None  # underlying@as_of of the chain snapshot
    chain_as_of: datetime | None = None
    modelled: bool = False  # priced by Black-Scholes (trading.option_pricing), not quoted

    def key(self) -> str:
        return self.contract

    @property
    def mid(self) -> float | None:
        if self.bid is None or self.ask is None or self.bid <= 0 or self.ask < self.bid:
            return None
        return (self.bid + self.ask) / 2.0


@dataclass(frozen=True, slots=True)
class EquityPoint(Record):
    SCHEMA: ClassVar[str] = "equity_point"
    account: str
    ts: datetime
    equity: float
    cash: float
    realized_pnl: float
    unrealized_pnl: float
    open_positions: int
    source: str

    def key(self) -> str:
        return self.account


RECONCILE_KINDS = ("quantity", "unknown_position", "closed_at_broker", "missed_fill", "unknown_order",
                   "cash_drift")


@dataclass(frozen=True, slots=True)
class ReconcileEvent(Record):
    SCHEMA: ClassVar[str] = "reconcile_event"
    account: str
    as_of: datetime
    decided_at: datetime
    kind: str
    symbol: str | None
    desk: str
    broker: str
    action: str
    detail: str

    def key(self) -> str:
        return self.account


ALERT_STATES = ("firing", "resolved")
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class Alert(Record):
    SCHEMA: ClassVar[str] = "alert"
    rule: str
    subject: str
    state: str
    severity: str
    started_at: datetime
    at: datetime
    summary: str
    details: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        return f"{self.rule}:{self.subject}"


CONTROL_ACTIONS = ("halt", "resume", "set")


@dataclass(frozen=True, slots=True)
class ControlEvent(Record):
    SCHEMA: ClassVar[str] = "control_event"
    id: str
    account: str  # an account name, or "*"
    action: str
    at: datetime
    reason: str
    settings: dict[str, str] = field(default_factory=dict)  # key -> JSON text
    flatten: bool = False
    operator: str = ""

    def key(self) -> str:
        return self.account


MINUTE_STAGES = ("features", "signals")
CLOSE_REASONS = ("complete", "deadline", "next_minute", "idle")


@dataclass(frozen=True, slots=True)
class MinuteClosed(Record):
    """A stage's watermark for one partition: `minute` (and every earlier one) is closed there."""

    SCHEMA: ClassVar[str] = "minute_closed"
    stage: str
    partition: int
    minute: datetime
    reason: str
    upto_offset: int
    input_upto: int
    at: datetime

    def key(self) -> str:
        return f"{self.stage}:{self.partition}"


@dataclass(frozen=True, slots=True)
class FeatureSnapshot(Record):
    """The features agent's engine state of one bars partition (state.features, compacted)."""

    SCHEMA: ClassVar[str] = "feature_snapshot"
    partition: int
    chunk: int
    chunks: int
    next_offset: int
    format: int
    engine_version: str
    symbols: int
    state: bytes
    checksum: str
    taken_at: datetime
    worker: str

    def key(self) -> str:
        return f"{self.partition}:{self.chunk}"


@dataclass(frozen=True, slots=True)
class WatchlistSnapshot(Record):
    """The watchlist agent's builder state (state.watchlist, compacted, one partition)."""

    SCHEMA: ClassVar[str] = "watchlist_snapshot"
    offsets: list[int]
    published: datetime | None
    format: int
    code_version: str
    state: bytes
    checksum: str
    taken_at: datetime
    worker: str

    def key(self) -> str:
        return "watchlist"


RECORD_TYPES: dict[str, type[Record]] = {
    cls.SCHEMA: cls
    for cls in (
        Bar,
        NewsItem,
        ScoredNews,
        Features,
        Recommendation,
        Execution,
        Position,
        WatchlistEntry,
        DeadLetter,
        BrokerAccount,
        BrokerPosition,
        OptionQuote,
        EquityPoint,
        ReconcileEvent,
        Alert,
        ControlEvent,
        MinuteClosed,
        FeatureSnapshot,
        WatchlistSnapshot,
    )
}

