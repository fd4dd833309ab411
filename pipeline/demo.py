"""`ops-pipeline demo`: the whole pipeline over the bundled sample session on the embedded default,
every stage its own process on bar time, then a summary, the runbook checks, the session's report
and a parity check against an in-process backtest (exit 1 if anything disagreed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from connectors.feeds import html_to_text
from connectors.intake import BarIntake, ProducerSink
from connectors.replay import load_bar_file, prepare_rows, publish
from opsinfra.embedded import EmbeddedServices, EmbeddedState
from opsinfra.errors import DecodeError, PipelineError
from opsinfra.kafka_config import admin_config
from opsinfra.kafka_io import read_to_end, true_end_offsets
from opsinfra.settings import Settings, redact_url
from pipeline import sample_session
from pipeline.sample_broker import SHADOW, broker_stream, control_stream
from pipeline.backtest_cli import print_summary, write_outputs
from pipeline.provision import provision
from pipeline.runbook import LiveRecords, decision_checks
from pipeline.supervisor import StageProcesses
from schemas.codec import decode, make_codec
from schemas.records import Alert, BrokerAccount, ControlEvent, Execution, NewsItem
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import ALERTS, ALL_TOPICS, BROKER_ACCOUNTS, BROKER_POSITIONS, CONTROL, NEWS_RAW, NEWS_SCORED
from schemas.topics import STATE_TOPICS
from trading.accounts import accounts_from_settings, parse_accounts
from trading.gates import DEFAULT_ACCOUNTS, AccountConfig
from trading.backtest import Backtester
from trading.calendar import TradingCalendar
from trading.signals import strategy_from_settings

SESSION_DIR = Path("data/sample_session")
STAGES = ("features", "classifier", "signals", "dispatch", "positions", "watchlist", "sink")  # consumers
WATCHERS = ("watchdog",)  # the demo runs it too; it consumes nothing (the fault tests reuse STAGES)
INPUT_TOPICS = ("market.bars.1m", "news.raw", "news.scored", "features.1m", "signals", "executions",
                "broker.accounts", "broker.positions", "control")


def demo_accounts(settings: Settings) -> tuple[AccountConfig, ...]:
    """PIPELINE_ACCOUNTS when set; else the two defaults and a shadow account whose gates read the
    session's recorded broker stream (pipeline.sample_broker)."""
    if settings.pipeline_accounts:
        return accounts_from_settings(settings)
    return (*DEFAULT_ACCOUNTS, *parse_accounts([SHADOW]))


def _accounts_json(accounts: tuple[AccountConfig, ...]) -> str:
    return json.dumps([a.to_dict() for a in accounts])


def _session_dir(data_dir: Path) -> Path:
    """The bundled session, or a regenerated copy when running outside the repository."""
    if (SESSION_DIR / "bars.csv").exists():
        return SESSION_DIR

    out = data_dir / "sample_session"
    if not (out / "bars.csv").exists():
        sample_session.write(out)
    return out


def _news_items(path: Path) -> list[NewsItem]:

    items = []
    for line in path.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        published = datetime.fromisoformat(row["published"])
        items.append(
            NewsItem(
                row["id"],
                row["feed"],
                row["title"],
                html_to_text(row["summary"]),
                row.get("link"),
                published,
                published,
                False,
            )
        )
    return items


def _committed(settings: Settings, bootstrap: str, topics: set[str]) -> dict[str, dict[tuple[str, int], int]]:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient


    admin = AdminClient(admin_config(settings, bootstrap))
    out: dict[str, dict[tuple[str, int], int]] = {}
    for g in admin.list_consumer_groups(request_timeout=15).result().valid:
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g.group_id)])[g.group_id]
        mine = {
            (tp.topic, tp.partition): tp.offset
            for tp in fut.result().topic_partitions
            if tp.topic in topics and tp.offset >= 0
        }
        if mine:
            out[g.group_id] = mine
    return out


def _sink_offsets(database_url: str) -> dict[tuple[str, int], int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute('SELECT topic, "partition", next_offset FROM sink_offsets').fetchall()
    return {(t, p): o for t, p, o in rows}


def wait_drained(
    settings: Settings,
    bootstrap: str,
    database_url: str,
    stages: StageProcesses,
    console: Console,
    timeout_s: float = 240.0,
) -> float:
    """Until every group that consumes a contract topic has committed its end, and the sink's
    offsets reach the end of every topic, twice in a row with nothing new written."""
    names = [settings.topic(t.name) for t in ALL_TOPICS if t not in STATE_TOPICS]  # not in the sink
    inputs = {settings.topic(t) for t in INPUT_TOPICS}
    started = time.monotonic()
    previous: dict[tuple[str, int], int] | None = None
    while time.monotonic() - started < timeout_s:
        dead = stages.dead()
        if dead:
            raise PipelineError(f"stage(s) exited: {', '.join(dead)} (see {stages.log_dir})")
        ends = {k: v for k, v in true_end_offsets(settings, bootstrap, names).items() if v > 0}
        groups = _committed(settings, bootstrap, inputs)
        sink = _sink_offsets(database_url)
        behind_groups = {
            g: sum(max(0, ends.get(tp, 0) - off) for tp, off in c.items()) for g, c in groups.items()
        }
        expected_groups = {
            f"{settings.pipeline_topic_prefix}ops-pipeline-{s}"
            for s in ("features", "classifier", "signals", "dispatch", "positions", "watchlist")
        }
        missing = [g for g in expected_groups if g not in groups]
        sink_behind = sum(max(0, end - sink.get(tp, 0)) for tp, end in ends.items())
        lag = sum(behind_groups.values())
        console.print(
            f"  waiting: consumer lag {lag}, sink behind {sink_behind}"
            + (f", groups not committed yet: {len(missing)}" if missing else "")
        )
        if lag == 0 and sink_behind == 0 and not missing and ends == previous:
            return time.monotonic() - started
        previous = ends
        time.sleep(2.0)
    raise PipelineError(f"not drained after {timeout_s:.0f}s (see the stage logs in {stages.log_dir})")


def _summary(
    database_url: str, console: Console, live: LiveRecords, accounts: Iterable[str]
) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:

        def one(q: str) -> int:
            row = conn.execute(q).fetchone()
            return int(row[0]) if row else 0

        counts = {
            "bars": one("SELECT count(*) FROM lane_telemetry"),
            "features": one("SELECT count(*) FROM lane_features"),
            "news items": one("SELECT count(*) FROM inbound_events_raw"),
            "news scored (item, ticker)": one("SELECT count(*) FROM inbound_events_classified"),
            "recommendations": one("SELECT count(*) FROM dispatch_recommendations"),
            "watchlist entries": one("SELECT count(*) FROM lane_watchlist_state"),
            "dead letters": one("SELECT count(*) FROM dead_letters"),
        }
        recs = conn.execute(
            "SELECT status, count(*) FROM dispatch_recommendations GROUP BY 1 ORDER BY 1"
        ).fetchall()
        execs = conn.execute(
            "SELECT account_name, status, count(*) FROM dispatch_executions GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        processing = one("SELECT count(*) FROM dispatch_recommendations WHERE status = 'PROCESSING'")
        rec_rows = {str(i) for (i,) in conn.execute("SELECT recommendation_id FROM dispatch_recommendations")}
        exec_rows = {
            (str(i), a)
            for i, a in conn.execute("SELECT recommendation_id, account_name FROM dispatch_executions")
        }
        no_bar = one(
            "SELECT count(*) FROM dispatch_executions WHERE sim_json->'bar_used'->>'timestamp' IS NULL"
        )
    t = Table(title="pipeline output (PostgreSQL)")
    t.add_column("what")
    t.add_column("rows", justify="right")
    for k, v in counts.items():
        t.add_row(k, str(v))
    console.print(t)
    r = Table(title="recommendations by status")
    r.add_column("status")
    r.add_column("count", justify="right")
    for status, n in recs:
        r.add_row(status, str(n))
    console.print(r)
    e = Table(title="executions by account and status")
    for col in ("account", "status", "count"):
        e.add_column(col)
    for acc, status, n in execs:
        e.add_row(acc, status, str(n))
    console.print(e)
    runbook = {
        "status PROCESSING": processing,
        "executions without sim_json.bar_used.timestamp": no_bar,
        **decision_checks(live.executions, live.signals, accounts, rec_rows, exec_rows),
    }
    console.print("runbook checks (each 0 on a correct run):")
    for k, v in runbook.items():
        console.print(f"  {k}: {v}")
    return {
        "counts": counts,
        "recommendations": dict(recs),
        "runbook": runbook,
        "executions": [{"account": a, "status": s, "count": n} for a, s, n in execs],
    }


def run_demo(settings: Settings, console: Console) -> int:

    started = time.monotonic()
    session = _session_dir(settings.pipeline_data_dir)
    console.print(
        f"[bold]ops-pipeline demo[/bold]: the bundled sample session ({session}; synthetic, "
        "7 symbols, one regular session of IEX-like minute bars and the day's news)"
    )
    with ExitStack() as stack:
        state = EmbeddedState.read(settings.pipeline_data_dir)
        db_env = settings.database_url.get_secret_value() if settings.database_url else None
        bootstrap = settings.kafka_bootstrap_servers or (state.kafka_bootstrap_servers if state else None)
        db = db_env or (state.database_url if state else None)
        fresh = False
        if bootstrap is None or db is None:
            services = EmbeddedServices(
                settings.pipeline_data_dir, kafka_bootstrap_servers=bootstrap, database_url=db
            )
            console.print(f"starting the embedded services under {services.data_dir}")
            stack.enter_context(services)
            bootstrap, db = services.kafka_bootstrap_servers, services.database_url
            fresh = services.broker is not None
        created, applied = provision(settings, bootstrap, db, fresh_broker=fresh)
        console.print(
            f"broker {bootstrap}: {len(created)} topics created; PostgreSQL {redact_url(db)}: "
            f"{len(applied)} migrations applied"
        )

        accounts = demo_accounts(settings)
        env = dict(
            os.environ,
            PIPELINE_ACCOUNTS=_accounts_json(accounts),
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            DATABASE_URL=db,
            PIPELINE_CLOCK="bar",
            PIPELINE_TOPIC_PREFIX=settings.pipeline_topic_prefix,
            PIPELINE_DATA_DIR=str(settings.pipeline_data_dir),
        )
        stages = StageProcesses(env, log_dir=settings.pipeline_data_dir / "logs", own_session=True)
        stack.callback(stages.stop)
        stages.start((*STAGES, *WATCHERS))
        console.print(f"started {len(STAGES) + len(WATCHERS)} stages ({', '.join((*STAGES, *WATCHERS))}); "
                      f"logs in {stages.log_dir}")

        codec = make_codec(settings.schema_registry_url)
        news = _news_items(session / "news.jsonl")
        with RecordProducer(settings, bootstrap, codec) as producer:
            for item in news:
                producer.send(NEWS_RAW, item)
        console.print(f"published {len(news)} news items; waiting for the classifier")
        _wait_scored(settings, bootstrap, {n.id for n in news}, stages)

        prep = prepare_rows(load_bar_file(session / "bars.csv"))
        # the recorded broker stream of the shadow account and the operator's changes: published
        # before the bars, consumed by dispatch in event-time order, given to the backtest alike
        broker: list[Any] = broker_stream() if any(a.name == SHADOW["name"] for a in accounts) else []
        names = {a.name for a in accounts}
        broker += [c for c in control_stream() if c.account in names]
        with RecordProducer(settings, bootstrap, codec) as producer:
            for record in broker:
                spec = (CONTROL if isinstance(record, ControlEvent) else
                        BROKER_ACCOUNTS if isinstance(record, BrokerAccount) else BROKER_POSITIONS)
                producer.send(spec, record)
        console.print(f"published {len(broker)} broker snapshot and control records (the shadow account's "
                      "recorded broker stream, an operator's halt and a setting change)")

        with RecordProducer(settings, bootstrap, codec) as producer:
            report = publish(prep, BarIntake(ProducerSink(producer), symbols=None), origin="demo", speed=None)
        console.print(
            f"replayed {report.published} bars ({report.repeats} exact repeats skipped); "
            "waiting until every stage has drained"
        )
        waited = wait_drained(settings, bootstrap, db, stages, console)
        console.print(f"drained in {waited:.0f}s")
        live = LiveRecords.read(settings, bootstrap, codec)
        summary = _summary(db, console, live, [a.name for a in accounts])
        out = Path("reports") / "demo"
        parity = _report_and_parity(settings, live, prep.bars, out, console, accounts, broker)
        summary["parity"] = parity
        summary["watchdog"] = _alert_counts(settings, bootstrap, codec, console)
        summary["broker_and_control"] = _broker_and_control(live.executions, broker)
        (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        ok = parity["identical"] and not any(summary["runbook"].values())
    console.print(
        f"demo finished in {time.monotonic() - started:.0f}s; stages and services stopped"
        if fresh
        else f"demo finished in {time.monotonic() - started:.0f}s; stages stopped"
    )
    return 0 if ok else 1


def _broker_and_control(executions: list[Execution], records: list[Any]) -> dict[str, Any]:
    """What the recorded broker stream and the operator's changes did to the live decisions."""
    halts = {c.account: c.at for c in records if isinstance(c, ControlEvent) and c.action == "halt"}
    resumes = {c.account: c.at for c in records if isinstance(c, ControlEvent) and c.action == "resume"}
    finals: dict[tuple[str, str], Execution] = {}
    for e in executions:
        finals[(e.recommendation_id, e.account)] = e
    decided = list(finals.values())

    def during_halt(e: Execution) -> bool:
        start, end = halts.get(e.account), resumes.get(e.account)
        return start is not None and end is not None and start <= e.decided_at < end

    first_gates: dict[str, dict[str, int]] = {}
    for e in decided:
        if e.status == "SKIPPED" and e.failure_reason:
            by = first_gates.setdefault(e.account, {})
            gate = e.failure_reason.split(":", 1)[0]
            by[gate] = by.get(gate, 0) + 1
    return {
        "halted_skips": sum(1 for e in decided if (e.failure_reason or "").startswith("halted:")),
        "exits_during_halt": sum(1 for e in decided if during_halt(e) and e.intent == "exit"
                                 and e.status != "SKIPPED"),
        "external_exits": sum(1 for e in decided if e.intent == "external_exit"),
        "skips_by_first_gate": first_gates,
    }


def _alert_counts(settings: Settings, bootstrap: str, codec: Any, console: Console) -> dict[str, Any]:
    """What the watchdog said during the run (the alerts topic): firing and resolved, by rule."""
    got = [r for _m, r in read_records(settings, bootstrap, codec, ALERTS, quiet_s=0.3) if isinstance(r, Alert)]
    by_state = {state: sorted(f"{a.rule}[{a.subject}]" for a in got if a.state == state)
                for state in ("firing", "resolved")}
    resolved = {(a.rule, a.subject, a.started_at) for a in got if a.state == "resolved"}
    still = sorted(f"{a.rule}[{a.subject}]" for a in got
                   if a.state == "firing" and (a.rule, a.subject, a.started_at) not in resolved)
    console.print(f"watchdog: {len(by_state['firing'])} alert(s) fired, {len(by_state['resolved'])} resolved"
                  + (f"; still firing: {', '.join(still)}" if still else ""))
    return {"fired": len(by_state["firing"]), "resolved": len(by_state["resolved"]), "still_firing": still}


def _wait_scored(
    settings: Settings, bootstrap: str, ids: set[str], stages: StageProcesses, timeout_s: float = 180
) -> None:

    codec = make_codec(settings.schema_registry_url)
    topic = settings.topic(NEWS_SCORED.name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stages.dead():
            raise PipelineError(f"stage(s) exited: {', '.join(stages.dead())} (see {stages.log_dir})")
        seen = set()
        for m in read_to_end(settings, bootstrap, topic, quiet_s=0.3):
            try:
                seen.add(decode(codec, NEWS_SCORED.record, m.value, m.headers, topic=topic).id)  # type: ignore[attr-defined]
            except DecodeError:
                continue
        if ids <= seen:
            return
        time.sleep(1.0)
    raise PipelineError(f"the classifier did not score the news within {timeout_s:.0f}s")


def _report_and_parity(
    settings: Settings, live: LiveRecords, bars: list[Any], out: Path, console: Console,
    accounts: tuple[AccountConfig, ...], broker: list[Any],
) -> dict[str, Any]:
    """The session's report from the live executions, and the same session backtested in-process."""

    calendar = TradingCalendar()
    if bars:
        calendar.session(bars[0].ts.date())  # load it before the backtest's clock starts
    bt = Backtester(accounts, calendar, strategy_from_settings(settings))
    bt.add_news(live.scored)
    bt.add_broker(broker)
    result = bt.run(bars)
    summary = write_outputs(out, result, "ops-pipeline demo: the sample session (backtest of the same bars)")
    print_summary(summary)

    def decisions(execs: list[Execution]) -> dict[tuple[str, str], tuple[Any, ...]]:
        def num(x: Any) -> Any:  # floats to 9 decimals: the two sides may differ in the last bits
            return round(x, 9) if isinstance(x, float) else x

        final: dict[tuple[str, str], tuple[Any, ...]] = {}
        for e in execs:
            final[(e.recommendation_id, e.account)] = (
                e.action,
                e.status,
                e.intent,
                e.failure_reason,
                num(e.qty),
                num(e.price),
                e.bar_used_ts,
                tuple((g.name, g.passed, num(g.value), num(g.limit)) for g in e.gates),
            )
        return final

    decided, replayed = decisions(live.executions), decisions(result.executions)
    sig_live = {(r.id, r.action, round(r.confidence, 12)) for r in live.signals}
    sig_bt = {(r.id, r.action, round(r.confidence, 12)) for r in result.signals}
    identical = decided == replayed and sig_live == sig_bt
    console.print(
        f"live vs in-process backtest of the same session: {len(sig_live)} vs {len(sig_bt)} recommendations, "
        f"{len(decided)} vs {len(replayed)} decisions: "
        + ("[green]identical[/green]" if identical else "[red]DIFFERENT[/red]")
    )
    if not identical:
        diff = sorted(set(decided.items()) ^ set(replayed.items()))[:5]
        console.print(f"first differences: {diff}")
    console.print(
        f"report: {out / 'report.html'} (and features/signals/executions/trades CSVs, summary.json)"
    )
    return {
        "identical": identical,
        "live_decisions": len(decided),
        "backtest_decisions": len(replayed),
        "live_recommendations": len(sig_live),
        "backtest_recommendations": len(sig_bt),
    }
