"""Test doubles that speak the real protocols (Alpaca market data) and a controllable clock."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner, Result

from opsinfra.settings import Settings
from schemas.records import Bar, DeadLetter

Cli = Callable[..., Result]


class ListSink:
    """A BarSink that keeps what it is given."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []
        self.dlq: list[DeadLetter] = []
        self.flushes = 0

    def send(self, bar: Bar) -> None:
        self.bars.append(bar)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dlq.append(letter)

    def flush(self) -> None:
        self.flushes += 1


class ManualClock:
    """`now()` moves only when the test says so; `sleep()` records the requested seconds and
    returns after a few real milliseconds, so a 90 s backoff is measured, not waited."""

    def __init__(self, start: datetime, *, real_scale: float = 0.0002, min_real: float = 0.002,
                 max_real: float = 0.02) -> None:
        assert start.tzinfo is not None
        self._now = start
        self.sleeps: list[float] = []
        self.real_scale = real_scale
        self.min_real = min_real
        self.max_real = max_real

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        assert when.tzinfo is not None
        self._now = when

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(min(self.max_real, max(self.min_real, seconds * self.real_scale)))


class SteppedClock:
    """Bar time that moves only when the test moves it, and `sleep(s)` that lasts until it has
    moved `s` seconds on: a 60 s timer or a backoff keeps its cadence in bar time while a test
    plays ten minutes of a session in a few real seconds. Safe to move from another thread."""

    def __init__(self, start: datetime, *, poll: float = 0.002) -> None:
        assert start.tzinfo is not None
        self._now = start
        self.poll = poll
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        assert when.tzinfo is not None and when >= self._now, "bar time never goes back"
        self._now = when

    def advance(self, seconds: float) -> None:
        self.set(self._now + timedelta(seconds=seconds))

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        until = self._now + timedelta(seconds=max(0.0, seconds))
        while self._now < until:
            await asyncio.sleep(self.poll)


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` on the event loop; the timeout only turns a hang into a clear failure."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@pytest.fixture
def fresh_structlog() -> Iterator[None]:
    """structlog at its defaults (stdout, resolved per call) before and after a test, whatever
    an earlier test configured: a logger bound to a since-closed capture stream fails on write."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provisioned: Settings,
        kafka_bootstrap: str, database_url: str) -> Iterator[Cli]:
    """`ops-pipeline ...` in process, configured by the environment like a user's shell."""
    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)  # no .env from the repository
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "APCA_", "ALPACA_", "PIPELINE_", "SCHEMA_REGISTRY", "DATABASE_URL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PIPELINE_TOPIC_PREFIX", provisioned.pipeline_topic_prefix)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    def invoke(*args: str, **env: str) -> Result:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    structlog.reset_defaults()
    yield invoke
    structlog.reset_defaults()  # the CLI configured structlog for its own (captured) stderr
