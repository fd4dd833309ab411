"""Where notifications go: a JSON webhook (Alertmanager's payload), Slack, Discord, Telegram and
email, each one blocking `send()` that raises DeliveryError; and which of them the settings configure.
"""

from __future__ import annotations

import smtplib
import ssl
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from opsinfra.errors import ConfigError, ConnectorError
from opsinfra.settings import Settings
from schemas.records import Alert

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell a person; a receiver sends a group of them as one message."""

    kind: str  # "alert", or one of notify.TRADING_KINDS
    title: str
    body: str
    alert: Alert | None = None


class DeliveryError(ConnectorError):
    """A receiver did not take a message. Its text never holds a URL or a secret."""

    def __init__(self, reason: str, *, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.retry_after = reason, retry, retry_after


def combined(items: Sequence[Notification]) -> tuple[str, str]:
    """The title and the whole text (each notification's title and body) of one message."""
    texts = [f"{n.title}\n{n.body}".rstrip() for n in items]
    if len(items) == 1:
        return items[0].title, texts[0]
    states = Counter(n.alert.state if n.alert else n.kind for n in items)
    title = f"ops-pipeline: {len(items)} notifications ({', '.join(f'{v} {k}' for k, v in states.items())})"
    return title, "\n\n".join([title, *texts])


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
            "startsAt": iso_utc(a.started_at),
            "endsAt": iso_utc(a.at) if a.state == "resolved" else "0001-01-01T00:00:00Z",
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
        blocks: list[dict[str, Any]] = [_slack_text("header", "plain_text", clip(title, 150))]
        for n in items[:45]:  # Slack takes 50 blocks
            section = f"*{n.title}*\n{n.body}" if len(items) > 1 else n.body
            blocks.append(_slack_text("section", "mrkdwn", clip(_slack_escape(section) or " ", 3000)))
        if len(items) > 45:
            blocks.append(_slack_text("section", "mrkdwn", f"+{len(items) - 45} more"))
        return {"text": clip(_slack_escape(text), 3000), "blocks": blocks}


class DiscordReceiver(HttpReceiver):
    """A Discord webhook: `content` up to 2,000 characters, mentions in alert texts disabled."""

    kind = "discord"
    max_chars = 2000

    def payload(self, items: Sequence[Notification]) -> dict[str, Any]:
        return {"content": clip(combined(items)[1], 2000), "allowed_mentions": {"parse": []}}


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
        return {"chat_id": self.chat_id, "text": clip(combined(items)[1], 4096),
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


# -- helpers ---------------------------------------------------------------------------------------


def _http_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL")
    return url


def iso_utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_text(block: str, kind: str, text: str) -> dict[str, Any]:
    return {"type": block, "text": {"type": kind, "text": text}}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
