"""kill -9 of the sink process, again and again, while a producer writes: nothing lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.topic_io import RecordProducer
from tests.integration.test_sink import (
    Sent,
    assert_tables_match,
    checksums,
    stored_offsets,
    wait_drained,
    workload,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]
KILLS = 9


def sink_process(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--only", "sink"],
                                env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def wait_for_progress(database_url: str, since: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until this incarnation has committed a batch, so the kill lands while it is working."""
    deadline = time.monotonic() + 60
    while sum(stored_offsets(database_url).values()) <= since:
        assert proc.poll() is None, f"the sink exited with {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no progress: {log.read_text()[-3000:]}"
        time.sleep(0.05)


def test_kill_9_in_a_loop_while_producing_loses_and_doubles_nothing(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DATABASE_URL=database_url,
               PIPELINE_TOPIC_PREFIX=provisioned.pipeline_topic_prefix,
               PIPELINE_DATA_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    env.pop("SCHEMA_REGISTRY_URL", None)
    sent: Sent = []
    produced: Counter[str] = Counter()
    done = threading.Event()

    def producer() -> None:
        with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as out:
            start = 0
            while not done.is_set():
                chunk = workload(start, 10)
                for spec, record in chunk:
                    out.send(spec, record)
                out.flush()
                sent.extend(chunk)
                produced.update(provisioned.topic(spec.name) for spec, _ in chunk)
                start += 10
                if start % 100 == 0:  # now and then the same range again: a duplicate delivery
                    again = workload(start - 100, 10)
                    for spec, record in again:
                        out.send(spec, record)
                    out.flush()
                    sent.extend(again)
                    produced.update(provisioned.topic(spec.name) for spec, _ in again)
                time.sleep(0.02)

    writer = threading.Thread(target=producer, name="producer", daemon=True)
    writer.start()
    rng = random.Random(20261122)
    log = tmp_path / "sink.log"
    try:
        for _ in range(KILLS):
            before = sum(stored_offsets(database_url).values())
            proc = sink_process(env, tmp_path, log)
            wait_for_progress(database_url, before, proc, log)
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
    finally:
        done.set()
        writer.join(30)
    proc = sink_process(env, tmp_path, log)
    try:
        wait_drained(database_url, produced)
        with psycopg.connect(database_url) as conn:
            assert_tables_match(conn, sent)
            before_stop = checksums(conn)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-3000:]
    with psycopg.connect(database_url) as conn:
        assert checksums(conn) == before_stop
