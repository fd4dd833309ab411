"""Notifications over real sockets: a local HTTP server stands in for the JSON webhook, Slack,
Telegram and Discord (their paths, payloads and answers), aiosmtpd for email. Needs no broker.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from connectors.notify import Notifier, NotifyConfig, receivers_from_settings
from opsinfra.metrics import Metrics
from opsinfra.settings import Settings
from schemas.records import Alert

T0 = datetime(2026, 11, 20, 14, 31, tzinfo=UTC)
SLACK = "/services/T0001/B0001/slack-token-1"
TELEGRAM_TOKEN = "123456:tg-token-1"
DISCORD = "/api/webhooks/42/discord-token-1"
WEBHOOK = "/hooks/ops?token=webhook-token-1"
SMTP_PASSWORD = "smtp-pass-1"  # noqa: S105 - a test value
SECRETS = ("slack-token-1", "tg-token-1", "discord-token-1", "webhook-token-1", SMTP_PASSWORD)
FAST = {"group_wait_s": 0.2, "backoff_floor_s": 0.05, "backoff_cap_s": 0.2}


def alert(subject: str = "features", state: str = "firing", rule: str = "stage_missing") -> Alert:
    return Alert(rule=rule, subject=subject, state=state, severity="critical", started_at=T0,
                 at=T0 + timedelta(minutes=5) if state == "resolved" else T0,
                 summary=f"consumer group of {subject} absent for 2 min",
                 details={"group": f"ops-pipeline-{subject}"})


@dataclass
class Hit:
    path: str
    body: Any
    at: float


@dataclass
class Inbox:
    """What the local server received, and what it answers: per path prefix, a script of
    (status, headers) used up in order, then 200 (204 for Discord, as Discord does)."""

    hits: list[Hit] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    closing: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""

    def of(self, prefix: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path.startswith(prefix)]

    def answer(self, path: str) -> tuple[int, dict[str, str]]:
        with self.lock:
            for prefix, steps in self.script.items():
                if path.startswith(prefix) and steps:
                    return steps.pop(0)
        return (204 if path.startswith("/api/webhooks/") else 200), {}


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        inbox: Inbox = self.server.inbox
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with inbox.lock:
            inbox.hits.append(Hit(self.path, body, time.monotonic()))
        if any(self.path.startswith(p) for p in inbox.hang):
            inbox.closing.wait(30)
            return
        status, headers = inbox.answer(self.path)
        payload = b"" if status == 204 else json.dumps({"ok": status < 300}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.inbox = box  # type: ignore[attr-defined]
    box.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box
    box.closing.set()
    server.shutdown()
    server.server_close()


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append(message_from_bytes(envelope.original_content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"ops" and data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox(port=port)
    controller = Controller(box, hostname="127.0.0.1", port=port, authenticator=_authenticate,
                            auth_require_tls=False)
    controller.start()
    yield box
    controller.stop()


def _settings(inbox: Inbox, mailbox: Mailbox | None = None, password: str = SMTP_PASSWORD,
              **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "alert_webhook_url": inbox.base + WEBHOOK,
        "slack_webhook_url": inbox.base + SLACK,
        "telegram_bot_token": TELEGRAM_TOKEN, "telegram_chat_id": "-1001", "telegram_api_url": inbox.base,
        "discord_webhook_url": inbox.base + DISCORD,
    }
    if mailbox is not None:
        values |= {"smtp_url": f"smtp://ops:{password}@127.0.0.1:{mailbox.port}",
                   "alert_email_to": "oncall@example.org, desk@example.org",
                   "alert_email_from": "ops-pipeline@example.org"}
    return Settings(_env_file=None, **values | extra)  # type: ignore[call-arg]


def _notifier(settings: Settings, **config: Any) -> Notifier:
    return Notifier(receivers_from_settings(settings, timeout_s=2.0),
                    NotifyConfig.from_settings(settings, **FAST | config),
                    secrets=settings.secret_values(), metrics=Metrics())


def test_every_receiver_gets_its_services_payload(inbox: Inbox, mailbox: Mailbox) -> None:
    with _notifier(_settings(inbox, mailbox)) as n:
        n.notify(alert())
        assert n.flush(10)
    (webhook,) = inbox.of("/hooks/ops")
    assert webhook.body["version"] == "4" and webhook.body["status"] == "firing"
    (am_alert,) = webhook.body["alerts"]
    assert am_alert["labels"] == {"alertname": "stage_missing", "rule": "stage_missing",
                                  "subject": "features", "severity": "critical"}
    assert am_alert["startsAt"] == "2026-11-20T14:31:00Z"
    assert am_alert["annotations"]["group"] == "ops-pipeline-features"
    (slack,) = inbox.of("/services/")
    assert set(slack.body) == {"text", "blocks"} and slack.body["blocks"][0]["type"] == "header"
    assert slack.body["blocks"][0]["text"]["text"] == "[FIRING] stage_missing: features"
    (telegram,) = inbox.of(f"/bot{TELEGRAM_TOKEN}/sendMessage")
    assert telegram.body["chat_id"] == "-1001"
    (discord,) = inbox.of(DISCORD)
    assert set(discord.body) == {"content", "allowed_mentions"}
    for text in (webhook.body["text"], slack.body["text"], telegram.body["text"], discord.body["content"]):
        assert "stage_missing: features" in text and "FIRING" in text
        assert "consumer group of features absent for 2 min" in text
    (mail,) = mailbox.messages
    assert mail["Subject"] == "[FIRING] stage_missing: features"
    assert mail["To"] == "oncall@example.org, desk@example.org" and mail["From"] == "ops-pipeline@example.org"
    assert mailbox.recipients == [["oncall@example.org", "desk@example.org"]]
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    body = payload.decode()
    assert "consumer group of features absent for 2 min" in body and "group: ops-pipeline-features" in body


def test_500_twice_then_200_is_delivered_once(inbox: Inbox) -> None:
    inbox.script[SLACK] = [(500, {}), (500, {})]
    with _notifier(_settings(inbox)) as n:
        n.notify(alert())
        assert n.flush(10)
    assert len(inbox.of(SLACK)) == 3  # two failures, one delivery
    assert [len(inbox.of(p)) for p in ("/hooks/ops", f"/bot{TELEGRAM_TOKEN}", DISCORD)] == [1, 1, 1]
    assert n.counts["retries"] == 2 and n.counts["failed"] == 0


def test_404_is_not_retried_and_429_waits_for_retry_after(inbox: Inbox) -> None:
    inbox.script[DISCORD] = [(404, {})]
    inbox.script[SLACK] = [(429, {"Retry-After": "1"})]
    with _notifier(_settings(inbox)) as n:
        n.notify(alert())
        assert n.flush(10)
    assert len(inbox.of(DISCORD)) == 1 and n.counts["failed"] == 1
    first, second = inbox.of(SLACK)
    assert second.at - first.at >= 1.0


def test_a_hanging_receiver_never_slows_the_caller(inbox: Inbox) -> None:
    inbox.hang.add(SLACK)
    n = _notifier(_settings(inbox), group_wait_s=0.0).start()
    try:
        took = []
        for i in range(200):
            start = time.perf_counter()
            n.notify(alert(subject=f"stage{i}"))
            took.append(time.perf_counter() - start)
        took.sort()
        assert took[100] < 0.001 and took[-1] < 0.5
        deadline = time.monotonic() + 10
        while len(_subjects(inbox, DISCORD)) < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(_subjects(inbox, DISCORD)) == 200  # the others are not held up by Slack
        assert len(inbox.of(SLACK)) == 1  # still hanging on its first message
    finally:
        started = time.monotonic()
        n.close(timeout=0.5)
        assert time.monotonic() - started < 2


def _subjects(inbox: Inbox, prefix: str) -> set[str]:
    return {line.split(": ", 1)[1] for h in inbox.of(prefix) for line in h.body["content"].splitlines()
            if line.startswith("[FIRING] stage_missing: ")}


def test_grouped_then_a_resolve_and_no_repeat_within_the_interval(inbox: Inbox) -> None:
    telegram = f"/bot{TELEGRAM_TOKEN}/sendMessage"
    with _notifier(_settings(inbox), group_wait_s=0.5) as n:
        for subject in ("features", "signals", "sink"):
            n.notify(alert(subject))
        assert n.flush(10)
        assert not n.notify(alert("features"))  # within ALERT_REPEAT_INTERVAL_S: not sent again
        n.notify(alert("features", "resolved"))
        assert n.flush(10)
    first, second = (h.body["text"] for h in inbox.of(telegram))
    assert first.startswith("ops-pipeline: 3 notifications (3 firing)")
    assert all(f"[FIRING] stage_missing: {s}" in first for s in ("features", "signals", "sink"))
    assert second.startswith("[RESOLVED] stage_missing: features")
    assert "after 5m 0s" in second


def test_secrets_never_reach_logs_or_errors(inbox: Inbox, mailbox: Mailbox,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for prefix in ("/hooks/ops", SLACK, "/bot", DISCORD):
        inbox.script[prefix] = [(500, {}), (403, {})]
    settings = _settings(inbox, mailbox, password=SMTP_PASSWORD + "-wrong")
    with _notifier(settings) as n:
        n.notify(alert(rule="token_leak", subject=f"feed https://u:{SMTP_PASSWORD}@x/{TELEGRAM_TOKEN}"))
        assert n.flush(10)
    assert n.counts["failed"] == 5 and mailbox.messages == []  # 403s and SMTP 535: given up, not retried
    for kind in ("webhook", "slack", "telegram", "discord", "email"):
        assert f"notification to {kind} " in caplog.text
    assert f"slack {inbox.base}/… not delivered (HTTP 403)" in caplog.text
    assert "email smtp://127.0.0.1:" in caplog.text and "(SMTP 535)" in caplog.text
    sent = json.dumps([h.body for h in inbox.hits])
    everything = caplog.text + repr(settings) + repr(n.receivers) + sent
    for secret in SECRETS:
        assert secret not in everything, secret
