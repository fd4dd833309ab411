"""The topic registry: each contract topic's name, key, record type, partitions and config (explicit
at creation: some brokers report only what was set then); symbol-keyed topics are co-partitioned.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import (
    Alert,
    Bar,
    BrokerAccount,
    BrokerPosition,
    ControlEvent,
    DeadLetter,
    EquityPoint,
    Execution,
    Features,
    FeatureSnapshot,
    MinuteClosed,
    NewsItem,
    OptionQuote,
    Position,
    Recommendation,
    ReconcileEvent,
    Record,
    ScoredNews,
    WatchlistEntry,
    WatchlistSnapshot,
)

DAY_MS = 24 * 3600 * 1000
SYMBOL_PARTITIONS = 6  # every symbol-keyed topic; changing it re-partitions every join
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    record: type[Record]
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: str = "delete"

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}

    @property
    def dlq(self) -> TopicSpec:
        return TopicSpec(
            name=self.name + DLQ_SUFFIX,
            record=DeadLetter,
            key=f"the original {self.key}",
            partitions=1,
            retention_ms=30 * DAY_MS,
        )


BARS = TopicSpec("market.bars.1m", Bar, "symbol", SYMBOL_PARTITIONS, 30 * DAY_MS)
NEWS_RAW = TopicSpec("news.raw", NewsItem, "item id", SYMBOL_PARTITIONS, 30 * DAY_MS)
NEWS_SCORED = TopicSpec("news.scored", ScoredNews, "ticker", SYMBOL_PARTITIONS, 30 * DAY_MS)
FEATURES = TopicSpec("features.1m", Features, "symbol", SYMBOL_PARTITIONS, 30 * DAY_MS)
SIGNALS = TopicSpec("signals", Recommendation, "symbol", SYMBOL_PARTITIONS, 90 * DAY_MS)
EXECUTIONS = TopicSpec("executions", Execution, "account:recommendation id", SYMBOL_PARTITIONS, 365 * DAY_MS)
POSITIONS = TopicSpec("positions", Position, "account:symbol", SYMBOL_PARTITIONS, 365 * DAY_MS)
WATCHLIST = TopicSpec("watchlist", WatchlistEntry, "symbol", SYMBOL_PARTITIONS, 30 * DAY_MS)
# The broker's truth, published before any decision reads it (the dispatch agent consumes the
# first two with its signals, so they share the symbol topics' partition count).
BROKER_ACCOUNTS = TopicSpec("broker.accounts", BrokerAccount, "account", SYMBOL_PARTITIONS, 365 * DAY_MS)
BROKER_POSITIONS = TopicSpec("broker.positions", BrokerPosition, "account:symbol", SYMBOL_PARTITIONS,
                             365 * DAY_MS)
OPTION_QUOTES = TopicSpec("options.quotes", OptionQuote, "contract", SYMBOL_PARTITIONS, 90 * DAY_MS)
EQUITY = TopicSpec("equity", EquityPoint, "account", SYMBOL_PARTITIONS, 365 * DAY_MS)
RECONCILE = TopicSpec("reconcile", ReconcileEvent, "account", SYMBOL_PARTITIONS, 365 * DAY_MS)
# The watchdog's alerts, and the operator's changes (compacted: the latest per key is the state;
# every change is also kept in the control_events table).
ALERTS = TopicSpec("alerts", Alert, "rule:subject", SYMBOL_PARTITIONS, 90 * DAY_MS)
CONTROL = TopicSpec("control", ControlEvent, "account or *", SYMBOL_PARTITIONS, 3650 * DAY_MS, "compact")
# Watermarks: "minute M closed in partition p" from the features and signal agents, written to
# partition p (co-partitioned with features.1m and signals), read by the signal and dispatch agents.
CLOCK = TopicSpec("clock.minutes", MinuteClosed, "stage:partition", SYMBOL_PARTITIONS, 30 * DAY_MS)

CONTRACT: tuple[TopicSpec, ...] = (
    BARS,
    NEWS_RAW,
    NEWS_SCORED,
    FEATURES,
    SIGNALS,
    EXECUTIONS,
    POSITIONS,
    WATCHLIST,
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    OPTION_QUOTES,
    EQUITY,
    RECONCILE,
    ALERTS,
    CONTROL,
    CLOCK,
)
# A stage's own state, re-derivable from the contract topics, so not stored by the sink: the features
# agent's engine snapshots, written to the partition of the bars partition they cover.
FEATURE_STATE = TopicSpec("state.features", FeatureSnapshot, "bars partition:chunk", SYMBOL_PARTITIONS,
                          3650 * DAY_MS, "compact")
# The watchlist agent's builder snapshots (one worker over every partition: one partition).
WATCHLIST_STATE = TopicSpec("state.watchlist", WatchlistSnapshot, "watchlist", 1, 3650 * DAY_MS, "compact")
STATE_TOPICS: tuple[TopicSpec, ...] = (FEATURE_STATE, WATCHLIST_STATE)
ALL_TOPICS: tuple[TopicSpec, ...] = CONTRACT + tuple(t.dlq for t in CONTRACT) + STATE_TOPICS
_BY_NAME = {t.name: t for t in ALL_TOPICS}


def spec(name: str, prefix: str = "") -> TopicSpec:
    """The spec of a contract topic, given its logical or (prefixed) physical name."""
    if prefix and name.startswith(prefix):
        name = name[len(prefix) :]
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a contract topic") from None
