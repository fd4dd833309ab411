"""Alerts and trading events to people (the receivers: connectors/notify_receivers.py) behind one
Notifier whose `notify()` never blocks, raises or waits on a receiver that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import httpx

from connectors.notify_receivers import (
    DeliveryError,
    Notification,
    Receiver,
    clip,
    iso_utc,
    receivers_from_settings,
)
from connectors.notify_receivers import DiscordReceiver as DiscordReceiver
from connectors.notify_receivers import EmailReceiver as EmailReceiver
from connectors.notify_receivers import HttpReceiver as HttpReceiver
from connectors.notify_receivers import SlackReceiver as SlackReceiver
from connectors.notify_receivers import TelegramReceiver as TelegramReceiver
from connectors.notify_receivers import redact_target as redact_target
from connectors.notify_receivers import retry_after as retry_after
from opsinfra.backoff import Backoff
from opsinfra.logs import scrub
from opsinfra.metrics import Metrics
from opsinfra.metrics import metrics as process_metrics
from opsinfra.settings import Settings
from schemas.records import Alert

log = logging.getLogger(__name__)

TRADING_KINDS = ("entry", "fill", "exit", "summary")


# -- text ------------------------------------------------------------------------------------------


def render_alert(alert: Alert, secrets: Iterable[str] = (), max_details: int = 8) -> Notification:
    """The rule, subject, state, summary and key details of an alert, for a person; secrets
    (and passwords inside URLs) scrubbed from the text and from the alert it carries."""
    alert = replace(alert, rule=scrub(alert.rule, secrets), subject=scrub(alert.subject, secrets),
                    summary=scrub(alert.summary, secrets),
                    details={k: scrub(str(v), secrets) for k, v in alert.details.items()})
    state = alert.state.upper()
    lines = [alert.summary, f"severity: {alert.severity}"]
    if alert.state == "resolved":
        lines.append(f"resolved {iso_utc(alert.at)} after {_duration(alert.at - alert.started_at)}")
    else:
        lines.append(f"since {iso_utc(alert.started_at)}")
    keys = sorted(alert.details)
    lines += [f"{k}: {clip(str(alert.details[k]), 200)}" for k in keys[:max_details]]
    if len(keys) > max_details:
        lines.append(f"(+{len(keys) - max_details} more details)")
    return Notification("alert", f"[{state}] {alert.rule}: {alert.subject}", "\n".join(lines), alert)



@dataclass(frozen=True, slots=True)
class AccountDay:
    """One account's trading day, as the daily summary reports it."""

    account: str
    trades: int
    realized_pnl: float
    unrealized_pnl: float = 0.0
    equity: float | None = None
    skips: Mapping[str, int] = field(default_factory=dict)  # reason -> count


def daily_summary(day: date, accounts: Sequence[AccountDay], alerts: Sequence[Alert] = ()) -> str:
    """The after-the-close text: per account trades, P&L, equity and skips by reason; the alerts
    of the day (each rule and subject once, with its last state). Send it with
    `notify_trading("summary", text)`."""
    lines = [f"ops-pipeline daily summary {day.isoformat()}"]
    for a in accounts:
        equity = f"{a.equity:,.2f}" if a.equity is not None else "n/a"
        pnl = a.realized_pnl + a.unrealized_pnl
        lines.append(f"{a.account}: {a.trades} trades, P&L {pnl:+,.2f} (realized {a.realized_pnl:+,.2f}, "
                     f"unrealized {a.unrealized_pnl:+,.2f}), equity {equity}")
        skips = sorted(a.skips.items(), key=lambda kv: (-kv[1], kv[0]))
        detail = ", ".join(f"{reason} {n}" for reason, n in skips) or "none"
        lines.append(f"  skips ({sum(a.skips.values())}): {detail}")
    last: dict[tuple[str, str], Alert] = {}
    fired: Counter[tuple[str, str]] = Counter()
    for alert in sorted(alerts, key=lambda x: x.at):
        last[(alert.rule, alert.subject)] = alert
        fired[(alert.rule, alert.subject)] += alert.state == "firing"
    lines.append(f"alerts ({len(last)})" + (":" if last else ": none"))
    for key, alert in last.items():
        lines.append(f"  {alert.state.upper()} {alert.rule}: {alert.subject} ({alert.severity}), "
                     f"fired {fired[key]}x: {alert.summary}")
    return "\n".join(lines)


# -- the notifier ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotifyConfig:
    repeat_interval_s: float = 3600.0  # a firing rule+subject is not sent again sooner, same state
    group_wait_s: float = 10.0  # what arrives this soon after a first notification joins its message
    max_group: int = 20  # notifications in one message at most
    queue_size: int = 1000  # per receiver; when full the oldest is dropped (and counted)
    retry_for_s: float = 3600.0  # a message is given up after retrying this long
    backoff_floor_s: float = 1.0
    backoff_cap_s: float = 120.0
    max_retry_after_s: float = 600.0  # a longer Retry-After is cut to this
    notify_trades: bool = False
    stage: str = "watchdog"  # the stage label of the counted drops and failures

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> NotifyConfig:
        s = settings
        return cls(**{"repeat_interval_s": s.alert_repeat_interval_s, "group_wait_s": s.alert_group_wait_s,
                      "notify_trades": s.notify_trades, **overrides})


class Notifier:
    """The process's one notifier. `notify()` renders, applies the repeat interval and appends to
    each receiver's bounded queue; a daemon thread per receiver groups, sends and retries. Threads,
    not asyncio tasks: the same plain call serves sync code and coroutines (it never awaits or
    waits on I/O), and blocking sends (smtplib, a server that hangs) never touch an event loop."""

    def __init__(self, receivers: Sequence[Receiver], config: NotifyConfig | None = None, *,
                 secrets: Iterable[str] = (), metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or NotifyConfig()
        self._secrets = tuple(s for s in secrets if s)
        self._metrics = metrics if metrics is not None else process_metrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[str, float]] = {}  # (rule, subject) -> state, when sent
        self.counts: Counter[str] = Counter()  # suppressed, dropped, messages, sent, retries, failed
        self._lanes = [_Lane(r, self) for r in receivers]
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings, *, stage: str = "watchdog",
                      transport: httpx.BaseTransport | None = None) -> Notifier:
        return cls(receivers_from_settings(settings, transport=transport),
                   NotifyConfig.from_settings(settings, stage=stage), secrets=settings.secret_values())

    @property
    def receivers(self) -> list[Receiver]:
        return [lane.receiver for lane in self._lanes]

    def start(self) -> Notifier:
        """Start the receivers' threads (the first notification does it too)."""
        with self._lock:
            if not self._started:
                self._started = True
                for lane in self._lanes:
                    lane.thread.start()
        return self

    def __enter__(self) -> Notifier:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, alert: Alert) -> bool:
        """Queue an alert for every receiver; False when the repeat interval suppresses it (or it
        could not be rendered). Returns in microseconds, whatever the receivers do."""
        try:
            item = render_alert(alert, self._secrets)
            if not self._admit(alert):
                return False
            self._enqueue(item)
            return True
        except Exception as exc:  # a notification must never break its caller
            log.error("notification not queued: %s", type(exc).__name__)
            return False

    def notify_trading(self, kind: str, text: str) -> bool:
        """Queue an entry, fill, exit or daily summary (first line = title) when NOTIFY_TRADES is on."""
        if not self.config.notify_trades or kind not in TRADING_KINDS:
            return False
        try:
            first, _, rest = scrub(text, self._secrets).partition("\n")
            self._enqueue(Notification(kind, f"[{kind.upper()}] {first}", rest))
            return True
        except Exception as exc:  # as notify(): never into the caller
            log.error("notification not queued: %s", type(exc).__name__)
            return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queue is empty and no send is in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        return all(lane.idle(deadline - time.monotonic()) for lane in self._lanes)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued without waiting to group it, for up to `timeout`; a receiver that
        still hangs then is abandoned (its thread is a daemon)."""
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.hurry()
        for lane in self._lanes:
            if lane.thread.is_alive():
                lane.thread.join(max(0.0, deadline - time.monotonic()))
            lane.abandon.set()
            closer = getattr(lane.receiver, "close", None)
            if closer is not None and not lane.thread.is_alive():
                closer()  # its connections; a hanging receiver's thread still uses them

    def _admit(self, alert: Alert) -> bool:
        key, now, state = (alert.rule, alert.subject), self._clock(), alert.state
        with self._lock:
            last = self._last.get(key)
            if last is not None and last[0] == state and (
                state == "resolved" or now - last[1] < self.config.repeat_interval_s
            ):
                self.counts["suppressed"] += 1
                return False
            self._last[key] = (state, now)
            return True

    def _enqueue(self, item: Notification) -> None:
        if not self._started:
            self.start()
        for lane in self._lanes:
            if lane.put(item):
                self._count("dropped", "NotificationDropped")

    def _count(self, what: str, kind: str | None = None, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n
        if kind is not None:
            self._metrics.errors.labels(self.config.stage, kind).inc(n)


class _Lane:
    """One receiver's queue and worker thread."""

    def __init__(self, receiver: Receiver, owner: Notifier) -> None:
        self.receiver, self.owner, self.config = receiver, owner, owner.config
        self.queue: deque[Notification] = deque()
        self.cond = threading.Condition()
        self.busy = False
        self.closing = False
        self.hurried = threading.Event()  # skip the grouping wait
        self.abandon = threading.Event()  # stop retrying
        self.thread = threading.Thread(target=self._run, name=f"notify-{receiver.kind}", daemon=True)

    def put(self, item: Notification) -> bool:
        with self.cond:
            dropped = len(self.queue) >= self.config.queue_size
            if dropped:
                self.queue.popleft()
            self.queue.append(item)
            self.cond.notify_all()
        return dropped

    def idle(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self.queue and not self.busy, max(0.0, timeout))

    def hurry(self) -> None:
        with self.cond:
            self.closing = True
            self.hurried.set()
            self.cond.notify_all()

    def _run(self) -> None:
        backlog = False  # what a full message left behind goes out without a grouping wait
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.closing)
                if not self.queue:
                    return
                self.busy = True
            if not backlog:
                self.hurried.wait(self.config.group_wait_s)
            with self.cond:
                batch = self._take()
                backlog = bool(self.queue)
            try:
                self._deliver(batch)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def _take(self) -> list[Notification]:
        """The next message's notifications: up to max_group, and within the receiver's size
        limit when it has one, so a long group is split rather than cut."""
        limit = getattr(self.receiver, "max_chars", None) or float("inf")
        batch = [self.queue.popleft()]
        size = 100 + len(batch[0].title) + len(batch[0].body)  # 100: the group's header line
        while self.queue and len(batch) < self.config.max_group:
            size += 2 + len(self.queue[0].title) + len(self.queue[0].body)
            if size > limit:
                break
            batch.append(self.queue.popleft())
        return batch

    def _deliver(self, batch: list[Notification]) -> None:
        r, owner, cfg = self.receiver, self.owner, self.config
        deadline = time.monotonic() + cfg.retry_for_s
        backoff = Backoff(cfg.backoff_floor_s, max(cfg.backoff_floor_s, cfg.backoff_cap_s))
        while True:
            try:
                r.send(batch)
            except DeliveryError as exc:
                if not exc.retry or time.monotonic() >= deadline or self.abandon.is_set():
                    log.error("notification to %s %s not delivered (%s)%s", r.kind, r.target, exc.reason,
                              "" if not exc.retry else ", gave up retrying")
                    owner._count("failed", "NotificationFailed", len(batch))
                    return
                delay = max(backoff.next(), min(exc.retry_after or 0.0, cfg.max_retry_after_s))
                log.warning("notification to %s %s failed (%s); retrying in %.1fs",
                            r.kind, r.target, exc.reason, delay)
                owner._count("retries")
                if self.abandon.wait(delay):
                    owner._count("failed", "NotificationFailed", len(batch))
                    return
            except Exception as exc:  # a receiver's bug must not end its thread
                log.error("notification to %s %s failed: %s", r.kind, r.target, type(exc).__name__)
                owner._count("failed", "NotificationFailed", len(batch))
                return
            else:
                owner._count("messages")
                owner._count("sent", n=len(batch))
                return


# -- helpers ---------------------------------------------------------------------------------------


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"
