"""Alerts and trading events to people (JSON webhook, Slack, Telegram, Discord, email) behind one
Notifier whose `notify()` never blocks, raises or waits on a receiver that is down.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from opsinfra.backoff import Backoff
from opsinfra.errors import ConfigError, ConnectorError
from opsinfra.logs import scrub
from opsinfra.metrics import Metrics
from opsinfra.metrics import metrics as process_metrics
from opsinfra.settings import Settings
from schemas.records import Alert

log = logging.getLogger(__name__)

TRADING_KINDS = ("entry", "fill", "exit", "summary")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell a person; a receiver sends a group of them as one message."""

    kind: str  # "alert", or one of TRADING_KINDS
    title: str
    body: str
    alert: Alert | None = None


class DeliveryError(ConnectorError):
    """A receiver did not take a message. Its text never holds a URL or a secret."""

    def __init__(self, reason: str, *, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.retry_after = reason, retry, retry_after


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
        lines.append(f"resolved {_iso(alert.at)} after {_duration(alert.at - alert.started_at)}")
    else:
        lines.append(f"since {_iso(alert.started_at)}")
    keys = sorted(alert.details)
    lines += [f"{k}: {_clip(str(alert.details[k]), 200)}" for k in keys[:max_details]]
    if len(keys) > max_details:
        lines.append(f"(+{len(keys) - max_details} more details)")
    return Notification("alert", f"[{state}] {alert.rule}: {alert.subject}", "\n".join(lines), alert)


def combined(items: Sequence[Notification]) -> tuple[str, str]:
    """The title and the whole text (each notification's title and body) of one message."""
    texts = [f"{n.title}\n{n.body}".rstrip() for n in items]
    if len(items) == 1:
        return items[0].title, texts[0]
    states = Counter(n.alert.state if n.alert else n.kind for n in items)
    title = f"ops-pipeline: {len(items)} notifications ({', '.join(f'{v} {k}' for k, v in states.items())})"
    return title, "\n\n".join([title, *texts])


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


# -- receivers -------------------------------------------------------------------------------------


class Receiver(Protocol):
    kind: str  # webhook, slack, telegram, discord, email
    target: str  # where it sends, safe to log

    def send(self, items: Sequence[Notification]) -> None:
        """Deliver one message or raise DeliveryError."""


def redact_target(url: str) -> str:
    """scheme://host[:port]/… : opsinfra.settings.redact_url keeps the path and query, where
    Slack, Discord and Telegram URLs carry their tokens."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    host += f":{parts.port}" if parts.port else ""
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{tail}"


def retry_after(headers: Mapping[str, str], body: Any = None, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait: Retry-After (seconds or an HTTP date), or the JSON
    body's `retry_after` (Discord) or `parameters.retry_after` (Telegram)."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if isinstance(body, dict):
        for holder in (body, body.get("parameters")):
            if isinstance(holder, dict) and isinstance(holder.get("retry_after"), int | float):
                return max(0.0, float(holder["retry_after"]))
    return None


class HttpReceiver:
    """POSTs JSON. Through an httpx transport, not a Client: the Client logs every request's full
    URL at INFO, and these URLs hold tokens. 5xx, 429 and connection errors are worth a retry."""

    kind = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None):
        self._url = url
        self.target = redact_target(url)
        self._timeout = httpx.Timeout(timeout_s).as_dict()
        self._transport = transport or httpx.HTTPTransport()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target})"

    def payload(self, items: Sequence[Notification]) -> dict[str, Any]:
        return webhook_payload(items)

    def close(self) -> None:
        self._transport.close()

    def send(self, items: Sequence[Notification]) -> None:
        request = httpx.Request("POST", self._url, json=self.payload(items),
                                extensions={"timeout": self._timeout})
        try:
            response = self._transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:  # its cause may quote the URL: not chained
            raise DeliveryError(type(exc).__name__, retry=True) from None
        status = response.status_code
        if status < 300:
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        raise DeliveryError(f"HTTP {status}", retry=status == 429 or status >= 500,
                            retry_after=retry_after(response.headers, body))


def webhook_payload(items: Sequence[Notification]) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4), so receivers written for it accept ours, plus
    `title` and `text` (the rendered message) and `notifications` (trading messages included)."""
    alerts: list[dict[str, Any]] = []
    for n in items:
        if n.alert is None:
            continue
        a = n.alert
        labels = {"alertname": a.rule, "rule": a.rule, "subject": a.subject, "severity": a.severity}
        alerts.append({
            "status": a.state, "labels": labels, "annotations": {"summary": a.summary, **a.details},
            "startsAt": _iso(a.started_at),
            "endsAt": _iso(a.at) if a.state == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": f"{a.rule}:{a.subject}",
        })
    common: dict[str, str] = dict(alerts[0]["labels"]) if alerts else {}
    for alert in alerts[1:]:
        common = {k: v for k, v in common.items() if alert["labels"].get(k) == v}
    title, text = combined(items)
    return {
        "version": "4", "groupKey": "ops-pipeline", "truncatedAlerts": 0, "receiver": "ops-pipeline",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "groupLabels": {}, "commonLabels": common, "commonAnnotations": {}, "externalURL": "",
        "alerts": alerts, "title": title, "text": text,
        "notifications": [{"kind": n.kind, "title": n.title, "text": n.body} for n in items],
    }


class SlackReceiver(HttpReceiver):
    """An incoming webhook: `text` (the fallback) and Block Kit blocks, within Slack's limits."""

    kind = "slack"

    def payload(self, items: Sequence[Notification]) -> dict[str, Any]:
        title, text = combined(items)
        blocks: list[dict[str, Any]] = [_slack_text("header", "plain_text", _clip(title, 150))]
        for n in items[:45]:  # Slack takes 50 blocks
            section = f"*{n.title}*\n{n.body}" if len(items) > 1 else n.body
            blocks.append(_slack_text("section", "mrkdwn", _clip(_slack_escape(section) or " ", 3000)))
        if len(items) > 45:
            blocks.append(_slack_text("section", "mrkdwn", f"+{len(items) - 45} more"))
        return {"text": _clip(_slack_escape(text), 3000), "blocks": blocks}


class DiscordReceiver(HttpReceiver):
    """A Discord webhook: `content` up to 2,000 characters, mentions in alert texts disabled."""

    kind = "discord"
    max_chars = 2000

    def payload(self, items: Sequence[Notification]) -> dict[str, Any]:
        return {"content": _clip(combined(items)[1], 2000), "allowed_mentions": {"parse": []}}


class TelegramReceiver(HttpReceiver):
    """The Bot API's sendMessage: plain text (no parse_mode, so nothing needs escaping)."""

    kind = "telegram"
    max_chars = 4096

    def __init__(self, token: str, chat_id: str, *, api_url: str = "https://api.telegram.org",
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None):
        url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
        super().__init__(url, timeout_s=timeout_s, transport=transport)
        self.chat_id = chat_id

    def payload(self, items: Sequence[Notification]) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "text": _clip(combined(items)[1], 4096),
                "link_preview_options": {"is_disabled": True}}


class EmailReceiver:
    """SMTP: smtps:// is TLS from the start; smtp:// upgrades with STARTTLS when offered, and
    never sends a password in clear text except to a loopback server."""

    kind = "email"

    def __init__(self, url: str, to: Sequence[str], sender: str | None = None, *, timeout_s: float = 10.0):
        parts = urlsplit(url)
        self._tls = parts.scheme == "smtps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (465 if self._tls else 587)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.to = tuple(to)
        self.sender = sender or (self._user if self._user and "@" in self._user else "ops-pipeline@localhost")
        self.timeout_s = timeout_s
        self.target = redact_target(f"{parts.scheme}://{self._host}:{self._port}")

    def __repr__(self) -> str:
        return f"EmailReceiver({self.target} -> {', '.join(self.to)})"

    def message(self, items: Sequence[Notification]) -> EmailMessage:
        title, text = combined(items)
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = title, self.sender, ", ".join(self.to)
        msg["Date"], msg["Message-ID"] = formatdate(localtime=False), make_msgid(domain="ops-pipeline")
        msg.set_content(text + "\n")
        return msg

    def send(self, items: Sequence[Notification]) -> None:
        context = ssl.create_default_context()
        try:
            smtp = (smtplib.SMTP_SSL(self._host, self._port, timeout=self.timeout_s, context=context)
                    if self._tls else smtplib.SMTP(self._host, self._port, timeout=self.timeout_s))
            with smtp:
                smtp.ehlo()
                if not self._tls and smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                elif not self._tls and self._password and self._host not in _LOOPBACK:
                    raise DeliveryError("server offers no STARTTLS: password not sent", retry=False)
                if self._user and self._password is not None:
                    smtp.login(self._user, self._password)
                smtp.send_message(self.message(items))
        except smtplib.SMTPResponseException as exc:  # 4xx is transient in SMTP, 5xx is not
            raise DeliveryError(f"SMTP {exc.smtp_code}", retry=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPRecipientsRefused:
            raise DeliveryError("SMTP recipients refused", retry=False) from None
        except ssl.SSLCertVerificationError:
            raise DeliveryError("SMTP certificate not trusted", retry=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(type(exc).__name__, retry=True) from None


def receivers_from_settings(settings: Settings, *, timeout_s: float = 10.0,
                            transport: httpx.BaseTransport | None = None) -> list[Receiver]:
    """Every receiver the environment configures; a ConfigError naming (never quoting) a bad one."""
    s, out = settings, list[Receiver]()
    kw: dict[str, Any] = {"timeout_s": timeout_s, "transport": transport}
    http: list[tuple[type[HttpReceiver], str, Any]] = [
        (HttpReceiver, "ALERT_WEBHOOK_URL", s.alert_webhook_url),
        (SlackReceiver, "SLACK_WEBHOOK_URL", s.slack_webhook_url),
        (DiscordReceiver, "DISCORD_WEBHOOK_URL", s.discord_webhook_url),
    ]
    for cls, name, secret in http:
        if secret is not None and secret.get_secret_value():
            out.append(cls(_http_url(secret.get_secret_value(), name), **kw))
    token = s.telegram_bot_token.get_secret_value() if s.telegram_bot_token else ""
    if token or s.telegram_chat_id:
        if not (token and s.telegram_chat_id):
            raise ConfigError("TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID go together")
        api = _http_url(s.telegram_api_url, "TELEGRAM_API_URL")
        out.append(TelegramReceiver(token, s.telegram_chat_id, api_url=api, **kw))
    if s.smtp_url is not None and s.smtp_url.get_secret_value():
        url = s.smtp_url.get_secret_value()
        if urlsplit(url).scheme not in ("smtp", "smtps") or not urlsplit(url).hostname:
            raise ConfigError("SMTP_URL must look like smtp://user:pass@host:port or smtps://...")
        to = [a.strip() for a in (s.alert_email_to or "").split(",") if a.strip()]
        if not to:
            raise ConfigError("SMTP_URL needs ALERT_EMAIL_TO (comma-separated addresses)")
        out.append(EmailReceiver(url, to, s.alert_email_from, timeout_s=timeout_s))
    return out


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


def _http_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL")
    return url


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_text(block: str, kind: str, text: str) -> dict[str, Any]:
    return {"type": block, "text": {"type": kind, "text": text}}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
