"""The bars connector's frozen configuration and counters: every timing lives here, so tests run an
outage or a 90 s wait in milliseconds with the production code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from connectors.alpaca_protocol import DEFAULT_STREAM_URL
from connectors.gaps import GapReport, RecheckReport
from opsinfra.errors import ConfigError
from opsinfra.settings import Settings


@dataclass(frozen=True, slots=True)
class BarsConfig:
    """Everything the connector decides with, built once from Settings (timings in seconds)."""

    symbols: tuple[str, ...]
    feed: str = "iex"
    stream_url: str = ""  # empty: Alpaca's, for the feed
    data_url: str | None = None
    backoff_floor_s: float = 1.0
    backoff_cap_s: float = 60.0
    connection_limit_wait_s: float = 90.0  # Alpaca reaps a half-dead socket after ~90 s
    connection_limit_jitter_s: float = 15.0
    stall_timeout_s: float = 180.0  # no bars that long while the market is open: reconnect
    gap_check_interval_s: float | None = 60.0  # None: only after each (re)connect
    gap_settle_s: float = 90.0  # a minute is due once it ended this long ago
    gap_lookback_s: float = 24 * 3600.0
    rest_timeout_s: float = 120.0
    recheck_minutes: int = 5  # after a reconnect, REST rechecks this many minutes before the drop
    recheck_attempts: int = 3  # REST tries per recheck (backoff between), then a warning
    handshake_timeout_s: float = 15.0
    poll_s: float = 1.0  # real seconds between stall checks while the socket is quiet
    flush_interval_s: float = 1.0
    tail_per_partition: int = 5000  # records read back per partition at start-up
    revision_memory: int = 2000  # minutes per symbol
    max_skew_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.backoff_floor_s <= self.backoff_cap_s:
            raise ConfigError("bars connector: need 0 < backoff floor <= backoff cap")
        positive = ("connection_limit_wait_s", "stall_timeout_s", "poll_s", "handshake_timeout_s",
                    "rest_timeout_s", "flush_interval_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"bars connector: {name} must be positive")
        if self.gap_check_interval_s is not None and not self.gap_check_interval_s > 0:
            raise ConfigError("bars connector: gap_check_interval_s must be positive (or None)")
        if self.recheck_minutes < 0 or self.recheck_attempts < 1:
            raise ConfigError("bars connector: need recheck_minutes >= 0 and recheck_attempts >= 1")
        if not self.symbols:
            raise ConfigError("bars connector: PIPELINE_SYMBOLS is empty")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BarsConfig:
        base = cls(
            symbols=settings.pipeline_symbols,
            feed=settings.alpaca_feed,
            stream_url=settings.alpaca_stream_url
            or DEFAULT_STREAM_URL.format(feed=settings.alpaca_feed),
            data_url=settings.alpaca_data_url,
        )
        return dataclasses.replace(base, **overrides)


@dataclass
class ConnectorStats:
    connections: int = 0  # authenticated and subscribed
    attempts: int = 0
    auth_failures: int = 0
    connection_limits: int = 0
    stalls: int = 0
    credential_loads: int = 0
    gap_reports: list[GapReport] = dataclasses.field(default_factory=list)
    recheck_reports: list[RecheckReport] = dataclasses.field(default_factory=list)
    rechecks_given_up: int = 0
