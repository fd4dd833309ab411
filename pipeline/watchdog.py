"""The watchdog stage: nothing fails silently. Every 15 s it evaluates rules over the facts `status`
gathers, publishes each rule's firing and resolution to the `alerts` topic, and notifies a person.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.records import Alert

log = logging.getLogger(__name__)

#: the consumer groups of the agents (under the topic prefix); bars and rss are judged by their topics
AGENT_GROUPS = ("features", "classifier", "signals", "dispatch", "positions", "watchlist")


@dataclass(frozen=True)
class WatchdogConfig:
    every_s: float = 15.0
    stage_missing_for_s: float = 120.0  # a group absent or not committing this long
    lag_limit: int = 1000
    lag_for_s: float = 300.0
    bar_stale_s: float = 120.0  # in market hours
    news_silent_s: float = 3600.0  # in market hours, with feeds configured
    runaway_executions: int = 200  # per account per day
    pending_recommendation_s: float = 600.0
    stages: tuple[str, ...] = AGENT_GROUPS
    # market-hours rules judge the wall clock; a replay on bar time (PIPELINE_CLOCK=bar) says
    # nothing about today's market, so they are off there
    market_rules: bool = True

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> WatchdogConfig:
        conf: dict[str, Any] = {"market_rules": getattr(settings, "pipeline_clock", "wall") != "bar"}
        return cls(**{**conf, **overrides})


@dataclass(frozen=True)
class Condition:
    """A rule's verdict for one subject, now: true conditions only."""

    rule: str
    subject: str
    severity: str
    summary: str
    details: dict[str, str] = field(default_factory=dict)
    for_s: float = 0.0  # how long it must hold before it fires


@dataclass
class Facts:
    """What the rules read: a status Report plus the watchdog's own reads (dead letters)."""

    report: Any  # pipeline.status.Report
    prefix: str = ""
    feeds_configured: bool = False
    dlq_ends: dict[str, int] = field(default_factory=dict)  # dlq topic -> end offset (sum)
    classifier_model: str | None = None  # the model named by the latest scored item
    executions_today: dict[str, int] = field(default_factory=dict)
    pending_recommendations: int = 0  # signals with no decision of some account after the limit
    reconcile_repeats: dict[tuple[str, str, str], int] = field(default_factory=dict)  # in the last 30 min
    stalled: str | None = None  # "N signals passed the confidence gate, no execution all session"


def evaluate(facts: Facts, config: WatchdogConfig, previous_dlq: dict[str, int]) -> list[Condition]:
    """Every rule over `facts`: the conditions that hold now (pure)."""
    r = facts.report
    out: list[Condition] = []
    groups = {g.group: g for g in r.groups}
    for stage in config.stages:
        group = f"{facts.prefix}ops-pipeline-{stage}"
        g = groups.get(group)
        if g is None:
            out.append(Condition("stage_missing", stage, "critical",
                                 f"stage {stage}: no consumer group {group} (never started, or gone)",
                                 {"group": group}, config.stage_missing_for_s))
        elif g.oldest_wait_s is not None and g.oldest_wait_s > config.stage_missing_for_s:
            out.append(Condition("stage_missing", stage, "critical",
                                 f"stage {stage}: not committing while its input grows "
                                 f"(a record waited {g.oldest_wait_s:.0f}s)", {"group": group}))
        if g is not None and g.lag > config.lag_limit:
            out.append(Condition("consumer_lag", stage, "warning", f"stage {stage}: lag {g.lag} records",
                                 {"lag": str(g.lag), "limit": str(config.lag_limit)}, config.lag_for_s))
    if r.market_open and config.market_rules:
        stale = [s for s in r.symbols if s.age_s is None or s.age_s > config.bar_stale_s]
        if r.symbols and len(stale) == len(r.symbols):
            out.append(Condition("bars_stopped", "market.bars.1m", "critical",
                                 f"no bar for any symbol for {config.bar_stale_s:.0f}s while the market is open",
                                 {"symbols": ",".join(s.symbol for s in stale)}))
        else:
            for s in stale:
                age = "ever" if s.age_s is None else f"{s.age_s:.0f}s"
                out.append(Condition("bar_stale", s.symbol, "warning", f"{s.symbol}: no bar for {age}",
                                     {"last_bar": s.last_bar or ""}))
        if facts.feeds_configured and (r.news_age_s is None or r.news_age_s > config.news_silent_s):
            age = "ever" if r.news_age_s is None else f"{r.news_age_s / 60:.0f} min"
            out.append(Condition("news_silent", "news.raw", "warning",
                                 f"news.raw silent for {age} with feeds configured"))
    if facts.classifier_model is not None and facts.classifier_model.startswith("lexicon"):
        out.append(Condition("classifier_fallback", "classifier", "warning",
                             f"the classifier scores with its fallback ({facts.classifier_model}), not the model",
                             {"model": facts.classifier_model}))
    for topic, end in sorted(facts.dlq_ends.items()):
        before = previous_dlq.get(topic)
        if before is not None and end > before:
            out.append(Condition("dead_letters", topic, "warning", f"{topic}: {end - before} new dead letter(s)",
                                 {"end": str(end), "new": str(end - before)}))
    for acct in getattr(r, "accounts", []):
        if acct.kill_switch:
            out.append(Condition("kill_switch", acct.account, "critical",
                                 f"account {acct.account}: daily loss kill switch tripped",
                                 {"realized_today": f"{acct.realized_today:.2f}"}))
        n = facts.executions_today.get(acct.account, 0)
        if n > config.runaway_executions:
            out.append(Condition("runaway", acct.account, "critical",
                                 f"account {acct.account}: {n} executions today (more than "
                                 f"{config.runaway_executions})", {"executions": str(n)}))
    for (account, kind, symbol), n in sorted(facts.reconcile_repeats.items()):
        if n >= 2:
            out.append(Condition("reconcile_persists", f"{account}:{kind}:{symbol}", "warning",
                                 f"account {account}: {kind} {symbol} reconciled {n} times in 30 min: the "
                                 "desk and the broker keep disagreeing", {"count": str(n)}))
    if facts.stalled:
        out.append(Condition("stall", "dispatch", "critical", facts.stalled))
    if facts.pending_recommendations:
        out.append(Condition("recommendation_pending", "dispatch", "warning",
                             f"{facts.pending_recommendations} recommendation(s) without a decision for over "
                             f"{config.pending_recommendation_s / 60:.0f} min",
                             {"count": str(facts.pending_recommendations)}))
    for problem in r.problems if config.market_rules else ():  # judged in market hours (status)
        if problem.startswith("broker") or "snapshot" in problem or "reconcile" in problem:
            out.append(Condition("broker_state", problem.split(":", 1)[0], "warning", problem))
    return out


@dataclass
class _Tracked:
    started_at: datetime
    condition: Condition
    firing: bool = False


class AlertBook:
    """The rules' state: a condition becomes an alert once it held for its `for_s`, and a resolved
    alert when it stops holding; returns only the transitions (to publish and notify)."""

    def __init__(self) -> None:
        self.tracked: dict[tuple[str, str], _Tracked] = {}

    def update(self, conditions: Iterable[Condition], now: datetime) -> list[Alert]:
        out: list[Alert] = []
        seen: set[tuple[str, str]] = set()
        for c in conditions:
            key = (c.rule, c.subject)
            seen.add(key)
            t = self.tracked.get(key)
            if t is None:
                t = self.tracked[key] = _Tracked(now, c)
            t.condition = c
            if not t.firing and (now - t.started_at).total_seconds() >= c.for_s:
                t.firing = True
                out.append(Alert(c.rule, c.subject, "firing", c.severity, t.started_at, now, c.summary,
                                 dict(c.details)))
        for key in [k for k in self.tracked if k not in seen]:
            t = self.tracked.pop(key)
            if t.firing:
                c = t.condition
                out.append(Alert(c.rule, c.subject, "resolved", c.severity, t.started_at, now,
                                 f"resolved: {c.summary}", dict(c.details)))
        return out

    def firing(self) -> list[tuple[str, str]]:
        return sorted(k for k, t in self.tracked.items() if t.firing)


class Watchdog:
    """The loop: gather facts, evaluate, publish transitions, notify."""

    def __init__(self, settings: Settings, endpoints: Endpoints, config: WatchdogConfig, *,
                 publish: Callable[[Alert], None], notify: Callable[[Alert], None] | None = None,
                 clock: Callable[[], datetime] | None = None, calendar: Any = None,
                 summary: Callable[[str], Any] | None = None) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.config = config
        self.publish = publish
        self.notify = notify
        self.clock = clock or (lambda: datetime.now(UTC))
        self.calendar = calendar
        self.book = AlertBook()
        self._dlq: dict[str, int] = {}
        self.rounds = 0
        self.summary = summary  # where the daily summary goes (the notifier, when NOTIFY_TRADES is on)
        self.today: list[Alert] = []  # the day's alerts, for the summary
        self._summarised: Any = None  # the session day last summarised

    def facts(self, now: datetime) -> Facts:
        from opsinfra.kafka_io import true_end_offsets
        from pipeline import status
        from schemas.topics import CONTRACT

        report = status.collect(self.settings, self.endpoints, now=now, calendar=self.calendar)
        dlq_names = [self.settings.topic(t.dlq.name) for t in CONTRACT]
        ends: dict[str, int] = {}
        for (topic, _p), end in true_end_offsets(self.settings, self.endpoints.kafka_bootstrap_servers,
                                                 dlq_names).items():
            ends[topic] = ends.get(topic, 0) + end
        facts = Facts(report, self.settings.pipeline_topic_prefix, bool(self.settings.rss_feeds), ends,
                      executions_today={a.account: a.trades_today for a in report.accounts})
        facts.reconcile_repeats = self._reconcile_repeats(now)
        if self.endpoints.database_url:
            try:
                self._from_tables(facts, now)
            except Exception as exc:  # noqa: BLE001 - the database is down: the other rules still run
                log.warning("watchdog: tables unreadable (%s); table rules skipped this round", exc)
        return facts

    def _reconcile_repeats(self, now: datetime) -> dict[tuple[str, str, str], int]:
        from opsinfra.kafka_io import read_tail
        from schemas.codec import decode, make_codec
        from schemas.records import ReconcileEvent
        from schemas.topics import RECONCILE

        topic = self.settings.topic(RECONCILE.name)
        codec = make_codec(self.settings.schema_registry_url)
        out: dict[tuple[str, str, str], int] = {}
        for m in read_tail(self.settings, self.endpoints.kafka_bootstrap_servers, topic, per_partition=200):
            try:
                ev = decode(codec, ReconcileEvent, m.value, m.headers, topic=topic)
            except Exception:  # noqa: BLE001 - a bad record is the sink's to dead-letter
                continue
            if isinstance(ev, ReconcileEvent) and ev.kind in ("quantity", "closed_at_broker", "missed_fill") \
                    and (now - ev.decided_at).total_seconds() <= 1800:
                key = (ev.account, ev.kind, ev.symbol or "")
                out[key] = out.get(key, 0) + 1
        return out

    def _from_tables(self, facts: Facts, now: datetime) -> None:
        """The old runbook's ranges: recommendations left undecided, and a session without a trade
        while signals passed the confidence gate (judged once the session closed)."""
        import psycopg

        from trading.accounts import accounts_from_settings
        from trading.calendar import TradingCalendar

        accounts = accounts_from_settings(self.settings)
        limit = self.config.pending_recommendation_s
        with psycopg.connect(str(self.endpoints.database_url), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM dispatch_recommendations r WHERE r.ts > %s AND r.ts < %s AND "
                "(SELECT count(*) FROM dispatch_executions e WHERE e.recommendation_id = r.recommendation_id)"
                " < %s", (now - timedelta(days=1), now - timedelta(seconds=limit), len(accounts))).fetchone()
            facts.pending_recommendations = int(row[0]) if row else 0
            cal = self.calendar or TradingCalendar.xnys()
            session = cal.session(now.date())
            if session is None or now < session.close:
                return
            floor = min(a.min_confidence for a in accounts)
            row = conn.execute(
                "SELECT (SELECT count(*) FROM dispatch_recommendations WHERE ts >= %s AND ts < %s "
                "AND confidence >= %s), (SELECT count(*) FROM dispatch_executions WHERE simulated_ts >= %s "
                "AND status IN ('SIMULATED', 'SUBMITTED', 'FILLED'))",
                (session.open, session.close, floor, session.open)).fetchone()
            if row and row[0] > 0 and row[1] == 0:
                facts.stalled = (f"{row[0]} signal(s) passed the confidence gate today and no account "
                                 "executed any: stalled")

    def round(self) -> list[Alert]:
        now = self.clock()
        facts = self.facts(now)
        alerts = self.book.update(evaluate(facts, self.config, self._dlq), now)
        self._dlq = facts.dlq_ends
        self.today = [a for a in self.today if a.at.date() == now.date()] + alerts
        self._daily_summary(facts, now)
        for alert in alerts:
            self.publish(alert)
            log.warning("alert %s %s[%s]: %s", alert.state.upper(), alert.rule, alert.subject, alert.summary)
            if self.notify is not None:
                self.notify(alert)
        self.rounds += 1
        return alerts

    def _daily_summary(self, facts: Facts, now: datetime) -> None:
        """Once per session, after the close: per account trades, P&L, equity, skips by reason,
        and the day's alerts."""
        from connectors.notify import AccountDay, daily_summary
        from trading.calendar import TradingCalendar

        if self.summary is None:
            return
        cal = self.calendar or TradingCalendar.xnys()
        session = cal.session(now.date())
        if session is None or now < session.close or self._summarised == now.date():
            return
        self._summarised = now.date()
        skips: dict[str, dict[str, int]] = {}
        if self.endpoints.database_url:
            try:
                import psycopg

                with psycopg.connect(str(self.endpoints.database_url), connect_timeout=5) as conn:
                    for account, reason, n in conn.execute(
                            "SELECT account_name, split_part(failure_reason, ':', 1), count(*) FROM "
                            "dispatch_executions WHERE status = 'SKIPPED' AND simulated_ts >= %s "
                            "GROUP BY 1, 2", (session.open,)):
                        skips.setdefault(account, {})[reason] = n
            except Exception as exc:  # noqa: BLE001 - the summary goes out without the skips
                log.warning("watchdog: skips of the day unreadable: %s", exc)
        days = [AccountDay(a.account, a.trades_today, a.realized_today, 0.0, a.equity, skips.get(a.account, {}))
                for a in facts.report.accounts]
        self.summary(daily_summary(now.date(), days, self.today))

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.round()
            except Exception:  # noqa: BLE001 - a failed round is logged; the next one tries again
                log.exception("watchdog: a round failed")
            stop.wait(max(0.0, self.config.every_s - (time.monotonic() - started)))


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: WatchdogConfig | None = None) -> None:
    """The `watchdog` stage."""
    from schemas.codec import make_codec
    from schemas.topic_io import RecordProducer
    from schemas.topics import ALERTS

    notifier: Any = None
    try:
        from connectors.notify import Notifier

        notifier = Notifier.from_settings(settings)
    except ImportError:  # pragma: no cover - the notifiers ship with the package
        notifier = None
    with RecordProducer(settings, endpoints.kafka_bootstrap_servers, make_codec(settings.schema_registry_url)) as out:
        def publish(alert: Alert) -> None:
            out.send(ALERTS, alert)
            out.flush(10.0)  # an alert is worth a round trip: on record before anyone is told

        dog = Watchdog(settings, endpoints, config or WatchdogConfig.from_settings(settings),
                       publish=publish,
                       notify=None if notifier is None else notifier.notify,
                       summary=None if notifier is None else (lambda text: notifier.notify_trading("summary", text)))
        log.info("watchdog: every %.0fs over %s", dog.config.every_s, ", ".join(dog.config.stages))
        try:
            dog.run(stop)
        finally:
            if notifier is not None:
                notifier.close()  # what is still queued goes out before the process ends
