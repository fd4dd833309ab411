"""Faults against the whole pipeline (the demo's seven stages over the bundled sample session, bar
clock): kill -9 of every stage mid-stream, the broker frozen (SIGSTOP) for 30 s, and client
connections cut again and again by a proxy. Each run's final PostgreSQL tables must equal those of
an uninterrupted run of the same session, with no execution doubled and nothing in PROCESSING."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsinfra.errors import PipelineError
from opsinfra.settings import Settings
from pipeline.demo import _committed, _sink_offsets
from schemas.topics import ALL_TOPICS
from tests.conftest import make_settings, with_search_path
from tests.fault.pipeline_helpers import (
    FaultStages,
    RunResult,
    differences,
    run_session,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]

# stage -> the topics its consumer group reads (the sink: its own offsets table)
READS = {
    "classifier": ("news.raw",),
    "features": ("market.bars.1m",),
    "signals": ("features.1m", "news.scored"),
    "dispatch": ("signals", "market.bars.1m"),
    "positions": ("executions",),
    "watchlist": ("news.scored", "signals", "executions", "features.1m"),
}


@pytest.fixture(scope="module")
def reference(
    kafka_bootstrap: str, pg_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunResult]:
    """The uninterrupted run of the session, under its own topic prefix and schema."""
    import uuid

    import psycopg
    from psycopg import sql

    tag = uuid.uuid4().hex[:8]
    schema = f"t_fault_reference_{tag}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        db = with_search_path(pg_server_url, schema)
        work = tmp_path_factory.mktemp("reference")
        settings = make_settings(kafka_bootstrap, db, f"fault_reference_{tag}.", work / "data")
        result = run_session(settings, kafka_bootstrap, db, work)
        assert result.tables["dispatch_executions"], "the reference run executed nothing"
        assert result.tables["lane_features"] and result.tables["inbound_events_classified"]
        assert result.duplicate_executions == {} and result.processing == 0
        yield result
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def assert_same_as_reference(reference: RunResult, result: RunResult) -> None:
    assert result.tables == reference.tables, differences(reference.tables, result.tables)
    assert result.duplicate_executions == {}
    assert result.processing == 0


def backlogs(settings: Settings, bootstrap: str, database_url: str) -> dict[str, int]:
    """Per stage, the records it has not committed yet (-1: its group has committed nothing yet
    although its input has records)."""
    from opsinfra.kafka_io import true_end_offsets

    names = [settings.topic(t.name) for t in ALL_TOPICS]
    ends = true_end_offsets(settings, bootstrap, names)
    done = _sink_offsets(database_url)
    out = {"sink": sum(max(0, end - done.get(tp, 0)) for tp, end in ends.items())}
    every = {settings.topic(t) for reads in READS.values() for t in reads}
    groups = _committed(settings, bootstrap, every)
    for stage, topics in READS.items():
        reads = {settings.topic(t) for t in topics}
        committed = groups.get(f"{settings.pipeline_topic_prefix}ops-pipeline-{stage}")
        if committed is None:
            out[stage] = -1 if any(end > 0 for (t, _), end in ends.items() if t in reads) else 0
        else:
            out[stage] = sum(
                max(0, end - committed.get((t, p), 0)) for (t, p), end in ends.items() if t in reads
            )
    return out


def test_an_uninterrupted_run_reproduces_the_reference(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The baseline the fault tests need: the same session twice, no fault, the same tables."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    assert_same_as_reference(reference, run_session(settings, kafka_bootstrap, database_url, tmp_path))


# -- 1. kill -9 of every stage, in turn, while it has work ------------------------------------------


def _kill_run(
    settings: Settings,
    bootstrap: str,
    database_url: str,
    tmp_path: Path,
    first: tuple[str, ...],
    todo: list[str],
) -> tuple[RunResult, dict[str, int]]:
    """`first` killed one by one from 0.5 s into the bars replay (they have the replay's records to
    process), then each of `todo` in turn: frozen (SIGSTOP) until it is seen with a backlog, so the
    kill lands while it has work however fast it keeps up, then killed. Every kill is followed by an
    immediate restart; a stage never seen with work stays in `todo`."""
    kills: dict[str, int] = {}

    def during_bars(stages: FaultStages, published: threading.Event) -> None:
        for stage in first:
            time.sleep(0.5)
            stages.restart(stage)
            kills[stage] = backlogs(settings, bootstrap, database_url)[stage]  # just after the kill
        for stage in list(todo):
            stages.freeze(stage)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                backlog = backlogs(settings, bootstrap, database_url)[stage]
                if backlog != 0:
                    todo.remove(stage)
                    kills[stage] = backlog
                    break
            stages.restart(stage)

    try:
        result = run_session(
            settings, bootstrap, database_url, tmp_path, during_bars=during_bars, drain_timeout_s=90
        )
    except PipelineError as exc:
        stuck = backlogs(settings, bootstrap, database_url)
        raise AssertionError(f"{exc}; killed with backlog {kills}; backlog now {stuck}") from exc
    print(
        f"backlog at each kill: {kills}; drained {result.drained_s:.0f}s after, {result.total_s:.0f}s in all"
    )
    return result, kills


def test_kill_9_of_every_bar_driven_stage_but_signals_mid_stream_changes_nothing(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """features killed while the bars are being published, then the sink, dispatch, positions
    and watchlist each once seen with a backlog (-1: its group has committed nothing of its input
    yet), each restarted at once. The signal agent has its own test below; the
    classifier's only input (the news) is scored before the bars start, it has its own test too."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    todo = ["sink", "dispatch", "positions", "watchlist"]
    result, kills = _kill_run(settings, kafka_bootstrap, database_url, tmp_path, ("features",), todo)
    assert_same_as_reference(reference, result)
    assert not todo, f"never seen with work, so not killed: {todo} (killed: {kills})"


def test_kill_9_of_the_signal_agent_mid_stream_changes_nothing(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The signal agent killed 0.5 s into the bars replay (features are flowing to it), restarted."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    result, _ = _kill_run(settings, kafka_bootstrap, database_url, tmp_path, ("signals",), [])
    assert_same_as_reference(reference, result)


def test_dispatch_cold_started_over_the_whole_session_decides_the_same(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The dispatch stage frozen from the first bar until every other stage has worked through the
    whole session, then killed and restarted: a cold start over a backlog of every features.1m
    partition and the signals topic, fetched at uneven paces. Its event-time order must restore the
    decisions of the run where it kept up (`tests/unit/test_ordering.py` pins the rules)."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    waited: list[dict[str, int]] = []

    def during_bars(stages: FaultStages, published: threading.Event) -> None:
        stages.freeze("dispatch")
        assert published.wait(120), "the bars were not published"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = backlogs(settings, kafka_bootstrap, database_url)
            if now["features"] == 0 and now["signals"] == 0 and now["dispatch"] != 0:
                waited.append(now)
                break
        stages.restart("dispatch")

    result = run_session(settings, kafka_bootstrap, database_url, tmp_path, during_bars=during_bars)
    assert waited, "features and signals never caught up while dispatch was frozen"
    print(f"dispatch restarted with backlogs {waited[0]}; drained {result.drained_s:.0f}s after")
    assert_same_as_reference(reference, result)


def test_kill_9_of_the_classifier_while_it_scores_changes_nothing(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The classifier's work is the news, before the bars: it is killed as soon as it is seen with
    unscored news, and restarted."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    backlog: list[int] = []

    def kill_when_busy(stages: FaultStages) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = backlogs(settings, kafka_bootstrap, database_url)["classifier"]
            if n != 0:
                backlog.append(n)
                stages.restart("classifier")
                return

    result = run_session(settings, kafka_bootstrap, database_url, tmp_path, after_start=kill_when_busy)
    assert backlog, "the classifier was never seen with news to score"
    assert_same_as_reference(reference, result)


# -- 2. the broker frozen for 30 s ----------------------------------------------------------------


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[object]:
    from opsinfra.embedded import TansuBroker

    (tmp_path / "tansu").mkdir()
    broker = TansuBroker(tmp_path / "tansu")
    broker.start()
    try:
        yield broker
    finally:
        broker.proc and broker.proc.poll() is None and os.kill(broker.proc.pid, signal.SIGCONT)
        broker.stop()


def test_broker_frozen_for_30s_mid_stream_changes_nothing(
    reference: RunResult, private_broker: object, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    from opsinfra.embedded import TansuBroker

    assert isinstance(private_broker, TansuBroker) and private_broker.proc is not None
    bootstrap = private_broker.bootstrap
    settings = make_settings(bootstrap, database_url, topic_prefix, tmp_path / "data")
    alive_after: list[list[str]] = []

    def during_bars(stages: FaultStages, published: threading.Event) -> None:
        time.sleep(3.0)  # the bars are flowing through the stages
        os.kill(private_broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            time.sleep(30.0)
        finally:
            os.kill(private_broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        alive_after.append(stages.dead())

    result = run_session(settings, bootstrap, database_url, tmp_path, during_bars=during_bars)
    assert alive_after == [[]], f"stage(s) exited while the broker was frozen: {alive_after}"
    assert_same_as_reference(reference, result)


# -- 3. a proxy that cuts every client connection every few seconds --------------------------------


class CuttingProxy:
    """TCP proxy 127.0.0.1:port -> target; `cut()` closes every open connection (both sides)."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.cuts = 0
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.accepted += 1
                self.conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
            self.cuts += 1
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()


def test_connections_cut_every_few_seconds_lose_and_double_nothing(
    reference: RunResult, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    from opsinfra.embedded import TansuBroker, free_port

    proxy_port = free_port()
    (tmp_path / "tansu").mkdir()
    broker = TansuBroker(tmp_path / "tansu", advertised_port=proxy_port)
    broker.start()
    proxy = CuttingProxy(broker.port, proxy_port)
    try:
        # the test's own clients go through the proxy too (the broker advertises only it)
        bootstrap = f"127.0.0.1:{proxy_port}"
        settings = make_settings(bootstrap, database_url, topic_prefix, tmp_path / "data")

        def during_bars(stages: FaultStages, published: threading.Event) -> None:
            for _ in range(6):
                time.sleep(4.0)
                proxy.cut()

        result = run_session(settings, bootstrap, database_url, tmp_path, during_bars=during_bars)
    finally:
        proxy.close()
        broker.stop()
    print(f"proxy: {proxy.cuts} cuts, {proxy.accepted} connections accepted")
    assert proxy.cuts >= 6
    assert_same_as_reference(reference, result)
