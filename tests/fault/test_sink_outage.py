"""PostgreSQL restarting (backends terminated) and down (connections cut and refused) under a
running sink: it retries with backoff, never exits, and ends with exactly the records produced."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from opsinfra.settings import Settings
from tests.integration.test_sink import (
    Sent,
    assert_tables_match,
    produce,
    running_sink,
    wait_drained,
    workload,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]


class Proxy:
    """A TCP forwarder to PostgreSQL that can be taken down (every connection cut, new ones
    refused) and brought back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    def up(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def down(self) -> None:
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread and frees the port
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes pumps blocked in recv or sendall
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # shutdown, not just close: a thread blocked on the other direction wakes up
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def terminate(admin_url: str, application_name: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s", (application_name,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_database_restarts_and_outages_lose_and_double_nothing(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, pg_server_url: str
) -> None:
    info = conninfo_to_dict(database_url)
    proxy = Proxy((str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)))
    proxy.up()
    url = make_conninfo(database_url, host="127.0.0.1", port=proxy.port)
    app = f"sink-outage-{uuid.uuid4().hex[:8]}"
    sent: Sent = []
    produced: Counter[str] = Counter()
    terminated = 0
    try:
        with running_sink(provisioned, kafka_bootstrap, url, application_name=app,
                          backoff_initial_s=0.05, backoff_max_s=0.5) as sink:
            assert sink.thread.is_alive()
            for step in range(12):
                chunk = workload(step * 25, 25)
                produced += produce(provisioned, kafka_bootstrap, chunk)
                sent += chunk
                time.sleep(0.05 * (step % 4))  # kill at different points of a batch
                if step % 2 == 0:
                    terminated += terminate(pg_server_url, app)  # as in a restart
                if step == 7:
                    proxy.down()  # and down for a while: connections cut, then refused
                    produced += produce(provisioned, kafka_bootstrap, chunk)
                    sent += chunk
                    time.sleep(1.5)
                    proxy.up()
            wait_drained(database_url, produced, running=sink)
            assert sink.stats.outages >= 2, sink.stats
    finally:
        proxy.down()
    assert terminated >= 3
    with psycopg.connect(database_url) as conn:
        assert_tables_match(conn, sent)
