"""The watchdog's rules and alert state: a condition fires after its hold time, resolves when it
stops holding, and each transition is reported once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.status import AccountStatus, GroupStatus, Report, SymbolStatus
from pipeline.watchdog import AGENT_GROUPS, AlertBook, Facts, WatchdogConfig, evaluate

T0 = datetime(2026, 2, 3, 15, 0, tzinfo=UTC)
CONFIG = WatchdogConfig()


def report(*, groups: list[GroupStatus] | None = None, market_open: bool = False,
           symbols: list[SymbolStatus] | None = None, accounts: list[AccountStatus] | None = None,
           news_age_s: float | None = 10.0) -> Report:
    all_groups = [GroupStatus(f"ops-pipeline-{s}", 0, 0, None) for s in AGENT_GROUPS]
    return Report(T0.isoformat(), market_open, [], all_groups if groups is None else groups,
                  symbols or [], news_age_s, {}, [], accounts or [])


def rules(facts: Facts, previous: dict[str, int] | None = None) -> dict[tuple[str, str], str]:
    return {(c.rule, c.subject): c.summary for c in evaluate(facts, CONFIG, previous or {})}


def test_a_healthy_pipeline_raises_nothing() -> None:
    assert rules(Facts(report(market_open=True, symbols=[SymbolStatus("AAPL", "x", 30.0, 0)]))) == {}


def test_a_stage_never_started_fires_after_two_minutes_and_resolves_when_it_starts() -> None:
    missing = report(groups=[GroupStatus(f"ops-pipeline-{s}", 0, 0, None) for s in AGENT_GROUPS
                             if s != "dispatch"])
    book = AlertBook()
    assert book.update(evaluate(Facts(missing), CONFIG, {}), T0) == []  # pending: not yet 2 min
    assert book.update(evaluate(Facts(missing), CONFIG, {}), T0 + timedelta(seconds=105)) == []
    (fired,) = book.update(evaluate(Facts(missing), CONFIG, {}), T0 + timedelta(seconds=120))
    assert (fired.rule, fired.subject, fired.state, fired.severity) == ("stage_missing", "dispatch", "firing",
                                                                        "critical")
    assert fired.started_at == T0 and "ops-pipeline-dispatch" in fired.summary
    assert book.update(evaluate(Facts(missing), CONFIG, {}), T0 + timedelta(seconds=135)) == []  # once
    (resolved,) = book.update(evaluate(Facts(report()), CONFIG, {}), T0 + timedelta(seconds=150))
    assert resolved.state == "resolved" and resolved.started_at == T0 and resolved.subject == "dispatch"


def test_a_condition_that_clears_before_its_hold_time_never_fires() -> None:
    missing = report(groups=[])
    book = AlertBook()
    book.update(evaluate(Facts(missing), CONFIG, {}), T0)
    assert book.update(evaluate(Facts(report()), CONFIG, {}), T0 + timedelta(seconds=60)) == []
    assert book.firing() == []


def test_the_bar_stream_stopping_in_market_hours_is_one_alert_and_closed_market_is_quiet() -> None:
    stale = [SymbolStatus(s, "2026-02-03T14:55:00+00:00", 300.0, 0) for s in ("AAPL", "MSFT")]
    assert set(rules(Facts(report(market_open=True, symbols=stale)))) == {("bars_stopped", "market.bars.1m")}
    assert rules(Facts(report(market_open=False, symbols=stale))) == {}
    one = [stale[0], SymbolStatus("MSFT", "x", 20.0, 0)]
    assert set(rules(Facts(report(market_open=True, symbols=one)))) == {("bar_stale", "AAPL")}


def test_lag_fallback_dead_letters_kill_switch_runaway_and_silent_news() -> None:
    lagging = [GroupStatus(f"ops-pipeline-{s}", 5000 if s == "signals" else 0, 1, 3.0) for s in AGENT_GROUPS]
    acct = AccountStatus("tiny-1k", True, 3, -60.0, 0)
    facts = Facts(report(groups=lagging, market_open=True, accounts=[acct], news_age_s=4000.0),
                  feeds_configured=True, dlq_ends={"signals.dlq": 7, "features.1m.dlq": 2},
                  classifier_model="lexicon:vader", executions_today={"tiny-1k": 201})
    got = rules(facts, previous={"signals.dlq": 5, "features.1m.dlq": 2})
    assert set(got) == {("consumer_lag", "signals"), ("kill_switch", "tiny-1k"), ("runaway", "tiny-1k"),
                        ("classifier_fallback", "classifier"), ("dead_letters", "signals.dlq"),
                        ("news_silent", "news.raw")}
    assert got[("dead_letters", "signals.dlq")] == "signals.dlq: 2 new dead letter(s)"


def test_the_daily_summary_goes_out_once_after_the_close() -> None:
    from opsinfra.endpoints import Endpoints
    from opsinfra.settings import Settings
    from pipeline.watchdog import Watchdog
    from trading.calendar import TradingCalendar

    sent: list[str] = []
    dog = Watchdog(Settings(_env_file=None), Endpoints("localhost:1", "", None, False), CONFIG,
                   publish=lambda _a: None, calendar=TradingCalendar(), summary=sent.append)
    facts = Facts(report(accounts=[AccountStatus("large-100k", False, 4, 125.5, 1, equity=100_125.5)]))
    dog._daily_summary(facts, T0)  # 10:00 New York: the session is still open
    assert sent == []
    after = datetime(2026, 2, 3, 21, 5, tzinfo=UTC)
    dog._daily_summary(facts, after)
    dog._daily_summary(facts, after + timedelta(minutes=5))
    assert len(sent) == 1 and "large-100k" in sent[0] and "125.5" in sent[0]
