"""Faults against the whole pipeline (the demo's seven stages over the bundled sample session, bar
clock): kill -9 of every stage mid-stream, the broker frozen (SIGSTOP) for 30 s, and client
connections cut again and again by a proxy. Each fault is shown to hit work in flight (a backlog at
every kill, freeze and cut; live connections cut, and the stages connected again). Each run's final
PostgreSQL tables must equal those of an uninterrupted run of the same session, with no execution
doubled and every runbook check 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsinfra.errors import PipelineError
from opsinfra.kafka_io import end_offsets, true_end_offsets
from opsinfra.settings import Settings
from pipeline.demo import _committed, _sink_offsets
from schemas.topics import ALL_TOPICS, STATE_TOPICS
from tests.conftest import make_settings, with_search_path
from tests.fault.pipeline_helpers import (
    FaultStages,
    RunResult,
    differences,
    run_session,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]

# stage -> the topics its consumer group reads and commits (the sink: its own offsets table); a
# topic listed here that the group does not commit would show a backlog that is never worked off
READS = {
    "classifier": ("news.raw",),
    "features": ("market.bars.1m",),
    "signals": ("features.1m", "news.scored"),
    "dispatch": ("signals", "features.1m", "broker.accounts", "broker.positions", "options.quotes",
                 "control"),
    "positions": ("executions",),
    "watchlist": ("features.1m", "news.scored"),
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
        assert result.duplicate_executions == {}
        assert failed_checks(result) == {}
        yield result
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def failed_checks(result: RunResult) -> dict[str, int]:
    """The runbook checks that are not 0."""
    return {check: n for check, n in result.runbook.items() if n}


def assert_same_as_reference(reference: RunResult, result: RunResult) -> None:
    assert result.tables == reference.tables, differences(reference.tables, result.tables)
    assert result.duplicate_executions == {}
    assert failed_checks(result) == {}


def backlogs(settings: Settings, bootstrap: str, database_url: str, *, exact: bool = False) -> dict[str, int]:
    """Per stage, the records of its inputs it has not committed yet (all of them while its group
    has committed nothing). A lower bound unless `exact` (Tansu reports ends short of the last
    batch; reading to the real end waits for a quiet topic, so not while bars are published)."""
    names = [settings.topic(t.name) for t in ALL_TOPICS if t not in STATE_TOPICS]  # not in the sink
    ends = (true_end_offsets if exact else end_offsets)(settings, bootstrap, names)
    done = _sink_offsets(database_url)
    out = {"sink": sum(max(0, end - done.get(tp, 0)) for tp, end in ends.items())}
    every = {settings.topic(t) for reads in READS.values() for t in reads}
    groups = _committed(settings, bootstrap, every)
    for stage, topics in READS.items():
        reads = {settings.topic(t) for t in topics}
        committed = groups.get(f"{settings.pipeline_topic_prefix}ops-pipeline-{stage}", {})
        out[stage] = sum(max(0, end - committed.get((t, p), 0)) for (t, p), end in ends.items() if t in reads)
    return out


def backlog_of(
    stage: str, settings: Settings, bootstrap: str, database_url: str, timeout_s: float = 60
) -> int:
    """The stage's backlog once it has one (it is frozen, or its input is still coming), else 0."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backlog = backlogs(settings, bootstrap, database_url)[stage]
        if backlog > 0:
            return backlog
        time.sleep(0.05)
    return 0


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
    stages_to_kill: tuple[str, ...],
) -> tuple[RunResult, dict[str, int]]:
    """0.5 s into the bars replay every stage to kill is frozen (SIGSTOP), then in turn, once seen
    with a backlog, killed and at once restarted: each kill lands while the stage has work, however
    fast it would keep up (a stage's input grows while it is frozen as long as the stages upstream
    run). Returns the backlog each was killed with (0: never seen with work)."""
    kills: dict[str, int] = {}

    def during_bars(stages: FaultStages, published: threading.Event) -> None:
        time.sleep(0.5)
        for stage in stages_to_kill:
            stages.freeze(stage)
        for stage in stages_to_kill:
            kills[stage] = backlog_of(stage, settings, bootstrap, database_url)
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
    """features, the sink, dispatch, positions and watchlist, frozen 0.5 s into the bars replay,
    then killed in turn, each with a backlog, each restarted at once. The signal agent has its own
    test below; the classifier's only input (the news) is scored before the bars start, it has its
    own test too."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    order = ("features", "sink", "dispatch", "positions", "watchlist")
    result, kills = _kill_run(settings, kafka_bootstrap, database_url, tmp_path, order)
    assert [s for s in order if kills.get(s, 0) <= 0] == [], f"killed without work in flight: {kills}"
    assert_same_as_reference(reference, result)


def test_kill_9_of_the_signal_agent_mid_stream_changes_nothing(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The signal agent killed 0.5 s into the bars replay with features waiting for it, restarted."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    result, kills = _kill_run(settings, kafka_bootstrap, database_url, tmp_path, ("signals",))
    assert kills["signals"] > 0, f"killed without work in flight: {kills}"
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
            now = backlogs(settings, kafka_bootstrap, database_url, exact=True)
            if now["features"] == 0 and now["signals"] == 0 and now["dispatch"] > 0:
                waited.append(now)
                break
            time.sleep(0.05)
        stages.restart("dispatch")

    result = run_session(settings, kafka_bootstrap, database_url, tmp_path, during_bars=during_bars)
    assert waited, "features and signals never caught up while dispatch was frozen"
    print(f"dispatch restarted with backlogs {waited[0]}; drained {result.drained_s:.0f}s after")
    assert_same_as_reference(reference, result)


def test_kill_9_of_the_classifier_while_it_scores_changes_nothing(
    reference: RunResult, kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The classifier's work is the news, before the bars: once it is seen with unscored news it is
    frozen, and killed if the news is still unscored (else thawed to try again), and restarted."""
    settings = make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")
    backlog: list[int] = []

    def kill_when_busy(stages: FaultStages) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if backlogs(settings, kafka_bootstrap, database_url)["classifier"] > 0:
                stages.freeze("classifier")
                n = backlogs(settings, kafka_bootstrap, database_url)["classifier"]
                if n > 0:
                    backlog.append(n)
                    stages.restart("classifier")
                    return
                stages.thaw("classifier")
            time.sleep(0.05)

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


PACED = 1200.0  # bar seconds a second: the session's bars take ~20 s to publish


def in_flight(
    settings: Settings, bootstrap: str, database_url: str, published: threading.Event
) -> dict[str, int]:
    """Backlogs once the pipeline is at work, while the bars are still being published: the
    features stage has written features, and a stage other than dispatch has records it has not
    committed (dispatch commits only as far as its event-time order is settled, so its backlog
    stays up long after its work is done). Empty if the bars were all published first."""
    features = [settings.topic("features.1m")]
    while not published.is_set():
        if sum(end_offsets(settings, bootstrap, features).values()) > 0:
            now = backlogs(settings, bootstrap, database_url)
            if any(n > 0 for stage, n in now.items() if stage != "dispatch") and not published.is_set():
                return now
        time.sleep(0.05)
    return {}


def test_broker_frozen_for_30s_mid_stream_changes_nothing(
    reference: RunResult, private_broker: object, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    from opsinfra.embedded import TansuBroker

    assert isinstance(private_broker, TansuBroker) and private_broker.proc is not None
    bootstrap = private_broker.bootstrap
    settings = make_settings(bootstrap, database_url, topic_prefix, tmp_path / "data")
    alive_after: list[list[str]] = []
    frozen_with: list[dict[str, int]] = []

    def during_bars(stages: FaultStages, published: threading.Event) -> None:
        frozen_with.append(in_flight(settings, bootstrap, database_url, published))  # just before
        os.kill(private_broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            time.sleep(30.0)
        finally:
            os.kill(private_broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        alive_after.append(stages.dead())

    result = run_session(settings, bootstrap, database_url, tmp_path, during_bars=during_bars,
                         bars_speed=PACED)
    print(f"broker frozen with backlogs {frozen_with[0]}")
    assert frozen_with[0], "the bars were all published before the stages were seen at work"
    assert alive_after == [[]], f"stage(s) exited while the broker was frozen: {alive_after}"
    assert_same_as_reference(reference, result)


# -- 3. a proxy that cuts every client connection every few seconds --------------------------------


Pair = tuple[socket.socket, socket.socket]  # (client side, upstream side) of one connection


class CuttingProxy:
    """TCP proxy 127.0.0.1:port -> target; `cut()` closes every open connection (both sides) and
    says how many were open."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self.lock = threading.Lock()
        self.conns: set[Pair] = set()  # open connections
        self.cuts: list[int] = []  # connections open at each cut
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
            pair = (client, upstream)
            with self.lock:
                self.accepted += 1
                self.conns.add(pair)
            threading.Thread(target=self._pipe, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, pair), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, pair: Pair) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(pair)  # closed by either end: no longer open
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> int:
        with self.lock:
            conns, self.conns = self.conns, set()
            self.cuts.append(len(conns))
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        return len(conns)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()


def proxy_ports(pid: int, proxy_port: int) -> set[int]:
    """The local ports of a process's open TCP connections to the proxy (Linux /proc)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        ports = set()
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as fh:
                for line in list(fh)[1:]:
                    local, remote, state, inode = (f := line.split())[1], f[2], f[3], f[9]
                    if inode in inodes and state == "01" and int(remote.rsplit(":", 1)[1], 16) == proxy_port:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
    except FileNotFoundError:  # the process has gone
        return set()
    return ports


def test_connections_cut_every_few_seconds_lose_and_double_nothing(
    reference: RunResult, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """Six cuts while the bars are published (over ~20 s) and the stages have work, each as soon
    as every stage is connected again after the last: before each, a backlog; each closes open
    connections, those of stages among them; after each, every stage that lost one connects again."""
    from opsinfra.embedded import TansuBroker, free_port

    proxy_port = free_port()
    (tmp_path / "tansu").mkdir()
    broker = TansuBroker(tmp_path / "tansu", advertised_port=proxy_port)
    broker.start()
    proxy = CuttingProxy(broker.port, proxy_port)
    cuts: list[tuple[dict[str, int], int, list[str]]] = []  # (backlogs, connections cut, stages cut off)
    reconnected: list[float] = []  # seconds after each cut until every stage cut off connected again
    try:
        # the test's own clients go through the proxy too (the broker advertises only it)
        bootstrap = f"127.0.0.1:{proxy_port}"
        settings = make_settings(bootstrap, database_url, topic_prefix, tmp_path / "data")

        def during_bars(stages: FaultStages, published: threading.Event) -> None:
            for _ in range(6):
                before = in_flight(settings, bootstrap, database_url, published)
                if not before:
                    return  # no work left to cut under: the assertions below say so
                held = {name: proxy_ports(proc.pid, proxy_port) for name, proc in stages.procs.items()}
                held = {name: ports for name, ports in held.items() if ports}
                cut_at = time.monotonic()
                cuts.append((before, proxy.cut(), sorted(held)))
                while time.monotonic() - cut_at < 60:  # every stage cut off connects again
                    again = {name: proxy_ports(stages.procs[name].pid, proxy_port) for name in held}
                    if all(again[name] - ports for name, ports in held.items()):
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError(f"not connected again within 60 s of a cut: {sorted(held)}")
                reconnected.append(round(time.monotonic() - cut_at, 2))
                time.sleep(1.0)  # spread over the stream

        result = run_session(settings, bootstrap, database_url, tmp_path, during_bars=during_bars,
                             bars_speed=PACED)
    finally:
        proxy.close()
        broker.stop()
    print(f"proxy: {proxy.accepted} connections accepted; cuts (backlogs, connections, stages): {cuts}; "
          f"all connected again after {reconnected} s")
    assert len(cuts) == 6, f"only {len(cuts)} cuts under work in flight: {cuts}"
    assert all(b and n > 0 and held for b, n, held in cuts), cuts
    assert_same_as_reference(reference, result)
