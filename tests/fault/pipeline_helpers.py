"""The whole pipeline over the bundled sample session, for fault tests: pipeline.demo's building
blocks (its stage processes, the session's news then bars, `wait_drained`) with hooks to interfere mid-run,
the final PostgreSQL tables as comparable rows, and the runbook's checks of the topics against them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console

from opsinfra.settings import Settings
from pipeline.demo import STAGES, _news_items, _wait_scored, wait_drained
from pipeline.runbook import LiveRecords, decision_checks, execution_checks
from pipeline.supervisor import StageProcesses
from schemas.codec import make_codec
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import EXECUTIONS, NEWS_RAW
from sinks.tables import LANE_FEATURES, LANE_TELEMETRY
from trading.accounts import accounts_from_settings

REPO = Path(__file__).resolve().parents[2]
SESSION = REPO / "data" / "sample_session"

# table -> the columns that must come out the same in every run (no wall-clock columns), ordered by
# the leading primary-key columns.
TABLES: dict[str, tuple[str, ...]] = {
    "lane_telemetry": tuple(c for c, _ in LANE_TELEMETRY.columns if c != "source"),
    "lane_features": tuple(c for c, _ in LANE_FEATURES.columns),  # all deterministic
    "inbound_events_classified": (
        "event_id",
        "ticker",
        "tickers",
        "sentiment",
        "score",
        "model",
        "published",
    ),
    "dispatch_recommendations": (
        "recommendation_id",
        "ts",
        "ticker",
        "action",
        "confidence",
        "status",
        "failure_reason",
    ),
    "dispatch_executions": (
        "recommendation_id",
        "account_name",
        "ticker",
        "action",
        "status",
        "intent",
        "qty",
        "price",
        "failure_reason",
        "simulated_ts",
    ),
}
ORDER = {
    "lane_telemetry": 2,
    "lane_features": 2,
    "inbound_events_classified": 2,
    "dispatch_recommendations": 1,
    "dispatch_executions": 2,
}  # fmt: skip


class FaultStages(StageProcesses):
    """The demo's stages run from a scratch directory (the faust stages keep local state under the
    working directory), plus kill -9 and restart of one stage."""

    def __init__(self, env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        super().__init__(env, log_dir=log_dir, cwd=cwd, own_session=True)
        self.log_dir: Path = log_dir
        self.restarts: Counter[str] = Counter()

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} had already exited ({proc.returncode})"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def freeze(self, name: str) -> None:
        """SIGSTOP the stage: it keeps its connections and does nothing (kill9 still works)."""
        os.killpg(self.procs[name].pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGCONT)

    def restart(self, name: str) -> None:
        self.kill9(name)
        self.restarts[name] += 1
        with open(self.log_dir / f"{name}.log", "ab") as log:
            log.write(f"\n===== kill -9 and restart #{self.restarts[name]} =====\n".encode())
        self.start((name,))


@dataclass
class RunResult:
    tables: dict[str, list[tuple[Any, ...]]]
    duplicate_executions: dict[tuple[str, str], int]
    runbook: dict[str, int]  # each 0 on a correct run
    drained_s: float
    total_s: float
    notes: list[str] = field(default_factory=list)


def stage_env(settings: Settings, bootstrap: str, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        DATABASE_URL=database_url,
        PIPELINE_CLOCK="bar",
        PIPELINE_TOPIC_PREFIX=settings.pipeline_topic_prefix,
        PIPELINE_DATA_DIR=str(settings.pipeline_data_dir),
        HF_HUB_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    env.pop("METRICS_PORT", None)
    return env


def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(database_url) as conn:
        for table, cols in TABLES.items():
            query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols),
                sql.Identifier(table),
                sql.SQL(", ").join(sql.Identifier(c) for c in cols[: ORDER[table]]),
            )
            out[table] = [tuple(r) for r in conn.execute(query).fetchall()]
    return out


def runbook_checks(settings: Settings, bootstrap: str, database_url: str) -> dict[str, int]:
    """The runbook's checks of the executions and signals topics, alone and against the tables."""
    live = LiveRecords.read(settings, bootstrap, make_codec(settings.schema_registry_url))
    with psycopg.connect(database_url) as conn:
        recs = {str(i) for (i,) in conn.execute("SELECT recommendation_id FROM dispatch_recommendations")}
        execs = {(str(i), a) for i, a in conn.execute(
            "SELECT recommendation_id, account_name FROM dispatch_executions")}
    accounts = [a.name for a in accounts_from_settings(settings)]
    return {
        **decision_checks(live.executions, live.signals, accounts, recs, execs),
        **execution_checks(live.executions),
    }


def duplicate_executions(settings: Settings, bootstrap: str) -> dict[tuple[str, str], int]:
    """(recommendation, account) pairs with more than one record on the executions topic."""
    codec = make_codec(settings.schema_registry_url)
    seen: Counter[tuple[str, str]] = Counter()
    for _, rec in read_records(settings, bootstrap, codec, EXECUTIONS, quiet_s=0.5):
        if not isinstance(rec, Exception):
            seen[(rec.recommendation_id, rec.account)] += 1  # type: ignore[attr-defined]
    return {k: n for k, n in seen.items() if n > 1}


def wait_ready(stages: FaultStages, timeout_s: float = 120.0) -> float:
    """Until every stage's log says it has its partitions: a run whose stages are all consuming
    before the first record is published (what "uninterrupted" means here). Tansu lists no groups
    and describes none as stable, so the logs are the signal (aiokafka's, the sink's own)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        assert not stages.dead(), f"stage(s) exited: {stages.dead()} (see {stages.log_dir})"
        waiting = []
        for name in stages.procs:
            text = (stages.log_dir / f"{name}.log").read_text("utf-8", "replace")
            marker = "assigned" if name == "sink" else "Setting newly assigned partitions {TopicPartition"
            if marker not in text:
                waiting.append(name)
        if not waiting:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"stages without partitions after {timeout_s:.0f}s: {waiting}")


def run_session(
    settings: Settings,
    bootstrap: str,
    database_url: str,
    workdir: Path,
    *,
    stage_bootstrap: str | None = None,
    during_bars: Callable[[FaultStages, threading.Event], None] | None = None,
    after_start: Callable[[FaultStages], None] | None = None,
    drain_timeout_s: float = 240.0,
    bars_speed: float | None = None,
) -> RunResult:
    """Provision, start the demo's stages, publish the session's news (wait until scored) and then
    its bars; `after_start(stages)` runs in a thread from the stages' start (joined before the
    bars); `during_bars(stages, published)` runs while the bars are published (`published` is
    set once they all are) and returns when its interference is over; then wait until drained
    and read the tables. `stage_bootstrap` is the address the stages use (e.g. a proxy);
    `bars_speed` paces the bars by bar time (bar seconds a second; None: as fast as possible)."""
    from connectors.intake import BarIntake, ProducerSink
    from connectors.replay import load_bar_file, prepare_rows, publish
    from pipeline.provision import provision

    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    console = Console(file=open(workdir / "drain.log", "w"), width=160)  # noqa: SIM115 - closed below
    provision(settings, bootstrap, database_url)
    stages = FaultStages(
        stage_env(settings, stage_bootstrap or bootstrap, database_url), workdir / "logs", workdir
    )
    try:
        stages.start(STAGES)
        wait_ready(stages)
        watcher = None
        if after_start is not None:
            watcher = threading.Thread(target=after_start, args=(stages,), daemon=True)
            watcher.start()
        codec = make_codec(settings.schema_registry_url)
        news = _news_items(SESSION / "news.jsonl")
        with RecordProducer(settings, bootstrap, codec) as producer:
            for item in news:
                producer.send(NEWS_RAW, item)
        if watcher is not None:
            watcher.join(90)
        _wait_scored(settings, bootstrap, {n.id for n in news}, stages)

        prep = prepare_rows(load_bar_file(SESSION / "bars.csv"))
        published = threading.Event()
        errors: list[BaseException] = []

        def replay() -> None:
            try:
                with RecordProducer(settings, bootstrap, codec) as producer:
                    publish(prep, BarIntake(ProducerSink(producer), symbols=None), origin="fault",
                            speed=bars_speed)
            except BaseException as exc:  # reported by the caller
                errors.append(exc)
            finally:
                published.set()

        publisher = threading.Thread(target=replay, name="bars-replay", daemon=True)
        publisher.start()
        if during_bars is not None:
            during_bars(stages, published)
        publisher.join(120)
        assert not errors, errors
        drained = wait_drained(settings, bootstrap, database_url, stages, console, timeout_s=drain_timeout_s)
        return RunResult(
            tables=snapshot(database_url),
            duplicate_executions=duplicate_executions(settings, bootstrap),
            runbook=runbook_checks(settings, bootstrap, database_url),
            drained_s=drained,
            total_s=time.monotonic() - started,
        )
    finally:
        stages.stop()
        console.file.close()


def differences(expected: dict[str, list[tuple[Any, ...]]], got: dict[str, list[tuple[Any, ...]]]) -> str:
    """A short account of how two snapshots differ, for assertion messages."""
    lines = []
    for table in expected:
        a, b = Counter(expected[table]), Counter(got[table])
        if a != b:
            missing, extra = list((a - b).elements()), list((b - a).elements())
            lines.append(
                f"{table}: {len(expected[table])} vs {len(got[table])} rows; missing {len(missing)} "
                f"e.g. {missing[:2]}; extra {len(extra)} e.g. {extra[:2]}"
            )
    return "\n".join(lines) or "identical"
