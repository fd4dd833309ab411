"""The notifier without a network: texts, payloads, HTTP answers mapped to retry or not, the repeat
interval, grouping, the bounded queue and a receiver that hangs (recording receivers, MockTransport).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connectors.notify import (
    AccountDay,
    DeliveryError,
    DiscordReceiver,
    EmailReceiver,
    HttpReceiver,
    Notification,
    Notifier,
    NotifyConfig,
    SlackReceiver,
    TelegramReceiver,
    daily_summary,
    receivers_from_settings,
    redact_target,
    render_alert,
    retry_after,
)
from opsinfra.errors import ConfigError
from opsinfra.metrics import Metrics
from opsinfra.settings import Settings
from schemas.records import Alert

T0 = datetime(2026, 11, 20, 14, 31, tzinfo=UTC)
FAST = NotifyConfig(group_wait_s=0.0, backoff_floor_s=0.01, backoff_cap_s=0.05)


def alert(rule: str = "stage_missing", subject: str = "features", state: str = "firing",
          **details: str) -> Alert:
    at = T0 + (timedelta(minutes=9, seconds=12) if state == "resolved" else timedelta())
    return Alert(rule=rule, subject=subject, state=state, severity="critical", started_at=T0, at=at,
                 summary=f"{subject}: consumer group absent for 2 min", details=details)


class Recorder:
    """A receiver that records each message, failing first with the errors it is given."""

    kind, target = "fake", "fake://"

    def __init__(self, *failures: DeliveryError, block: threading.Event | None = None) -> None:
        self.failures = list(failures)
        self.block = block
        self.sent: list[list[Notification]] = []
        self.attempts: list[float] = []

    def send(self, items: Sequence[Notification]) -> None:
        self.attempts.append(time.monotonic())
        if self.block is not None:
            self.block.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(list(items))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- texts -----------------------------------------------------------------------------------------


def test_an_alert_text_names_rule_subject_state_summary_and_details() -> None:
    n = render_alert(alert(group="ops-pipeline-features", input_lag="1234"))
    assert n.title == "[FIRING] stage_missing: features"
    assert "features: consumer group absent for 2 min" in n.body
    assert "since 2026-11-20T14:31:00Z" in n.body and "severity: critical" in n.body
    assert "group: ops-pipeline-features" in n.body and "input_lag: 1234" in n.body


def test_a_resolve_text_says_how_long_it_lasted() -> None:
    n = render_alert(alert(state="resolved"))
    assert n.title == "[RESOLVED] stage_missing: features"
    assert "resolved 2026-11-20T14:40:12Z after 9m 12s" in n.body


def test_many_details_are_cut_and_secrets_scrubbed_from_texts() -> None:
    n = render_alert(alert(**{f"k{i}": "v" for i in range(12)}, url="https://u:hunter2@feed.example/x",
                           token="123:SECRET"), secrets=["123:SECRET"])
    assert "(+6 more details)" in n.body
    assert "hunter2" not in n.body and "SECRET" not in n.body


def test_daily_summary_per_account_and_alerts_of_the_day() -> None:
    text = daily_summary(
        date(2026, 11, 20),
        [AccountDay("large-100k", 4, 100.0, 23.45, 100_123.45, {"confidence": 7, "halted": 3}),
         AccountDay("tiny-1k", 0, 0.0, equity=1000.0)],
        [alert(), alert(state="resolved"), alert("no_bars", "AAPL")],
    )
    assert text.splitlines() == [
        "ops-pipeline daily summary 2026-11-20",
        "large-100k: 4 trades, P&L +123.45 (realized +100.00, unrealized +23.45), equity 100,123.45",
        "  skips (10): confidence 7, halted 3",
        "tiny-1k: 0 trades, P&L +0.00 (realized +0.00, unrealized +0.00), equity 1,000.00",
        "  skips (0): none",
        "alerts (2):",
        "  RESOLVED stage_missing: features (critical), fired 1x: features: consumer group absent for 2 min",
        "  FIRING no_bars: AAPL (critical), fired 1x: AAPL: consumer group absent for 2 min",
    ]


# -- payloads and HTTP answers ---------------------------------------------------------------------


def _capture(status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[
        list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers=headers, content=body)

    return seen, httpx.MockTransport(handler)


def test_payload_shapes_of_the_http_receivers() -> None:
    items = [render_alert(alert()), render_alert(alert("no_bars", "AAPL"))]
    seen, transport = _capture()
    for r in (HttpReceiver("https://hooks.example/x", transport=transport),
              SlackReceiver("https://hooks.slack.com/services/T/B/tok", transport=transport),
              DiscordReceiver("https://discord.com/api/webhooks/1/tok", transport=transport),
              TelegramReceiver("1:tok", "-100", api_url="https://api.telegram.org", transport=transport)):
        r.send(items)
    webhook, slack, discord, telegram = (json.loads(r.content) for r in seen)
    assert webhook["version"] == "4" and webhook["status"] == "firing"
    assert [a["labels"]["alertname"] for a in webhook["alerts"]] == ["stage_missing", "no_bars"]
    assert webhook["commonLabels"] == {"severity": "critical"}
    assert set(slack) == {"text", "blocks"} and slack["blocks"][0]["type"] == "header"
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "section"]
    assert set(discord) == {"content", "allowed_mentions"} and discord["allowed_mentions"] == {"parse": []}
    assert str(seen[3].url) == "https://api.telegram.org/bot1:tok/sendMessage"
    assert telegram["chat_id"] == "-100"
    for text in (webhook["text"], slack["text"], discord["content"], telegram["text"]):
        assert "stage_missing: features" in text and "no_bars: AAPL" in text


def test_slack_text_is_escaped_and_limits_hold() -> None:
    long = alert(summary_extra="x" * 5000)
    seen, transport = _capture()
    SlackReceiver("https://hooks.slack.com/services/T/B/tok", transport=transport).send(
        [Notification("entry", "[ENTRY] AAPL <buy> & hold", "")] + [render_alert(long)] * 60)
    payload = json.loads(seen[0].content)
    assert "&lt;buy&gt; &amp; hold" in payload["text"]
    assert len(payload["blocks"]) <= 50 and all(len(b["text"]["text"]) <= 3000 for b in payload["blocks"])


@pytest.mark.parametrize(("status", "retry"), [(500, True), (503, True), (429, True), (404, False),
                                               (400, False), (401, False), (403, False)])
def test_http_statuses_map_to_retry_or_not(status: int, retry: bool) -> None:
    _, transport = _capture(status, {"Retry-After": "7"})
    with pytest.raises(DeliveryError) as failed:
        HttpReceiver("https://hooks.example/secret-path", transport=transport).send([render_alert(alert())])
    assert failed.value.retry is retry and failed.value.retry_after == 7.0
    assert "secret-path" not in str(failed.value) and str(failed.value) == f"HTTP {status}"


def test_a_connection_error_is_retried_and_does_not_quote_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}")

    with pytest.raises(DeliveryError) as failed:
        HttpReceiver("https://hooks.example/tok", transport=httpx.MockTransport(refuse)).send(
            [render_alert(alert())])
    assert failed.value.retry and str(failed.value) == "ConnectError" and failed.value.__cause__ is None


def test_retry_after_from_header_date_and_bodies() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Fri, 20 Nov 2026 12:00:30 GMT"}, now=now) == 30.0
    assert retry_after({}, {"retry_after": 1.5}) == 1.5  # Discord
    assert retry_after({}, {"ok": False, "parameters": {"retry_after": 12}}) == 12.0  # Telegram
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_redacted_targets_keep_only_scheme_and_host() -> None:
    assert redact_target("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/…"
    assert redact_target("https://api.telegram.org/bot1:tok/sendMessage") == "https://api.telegram.org/…"
    assert redact_target("http://u:pw@127.0.0.1:8080/?token=x") == "http://127.0.0.1:8080/…"
    assert redact_target("https://example.com") == "https://example.com"


# -- receivers from settings -----------------------------------------------------------------------


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_receivers_from_settings_and_no_secret_in_reprs() -> None:
    s = _settings(alert_webhook_url="https://hooks.example/wh-secret",
                  slack_webhook_url="https://hooks.slack.com/services/T/B/slack-secret",
                  telegram_bot_token="123:tg-secret", telegram_chat_id="42",
                  discord_webhook_url="https://discord.com/api/webhooks/1/dc-secret",
                  smtp_url="smtp://ops:mail-secret@mail.example:587", alert_email_to="a@x.org, b@x.org")
    receivers = receivers_from_settings(s)
    assert [r.kind for r in receivers] == ["webhook", "slack", "discord", "telegram", "email"]
    email = receivers[-1]
    assert isinstance(email, EmailReceiver) and email.to == ("a@x.org", "b@x.org")
    notifier = Notifier(receivers, secrets=s.secret_values())
    text = repr(s) + repr(receivers) + repr(notifier.receivers) + str([r.target for r in receivers])
    for secret in ("wh-secret", "slack-secret", "tg-secret", "dc-secret", "mail-secret"):
        assert secret not in text
    assert receivers_from_settings(_settings()) == []


@pytest.mark.parametrize(("values", "message"), [
    ({"telegram_bot_token": "1:x"}, "TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID"),
    ({"smtp_url": "smtp://mail.example"}, "ALERT_EMAIL_TO"),
    ({"smtp_url": "http://u:pw-secret@mail.example", "alert_email_to": "a@x"}, "SMTP_URL"),
    ({"slack_webhook_url": "ftp://slack-secret"}, "SLACK_WEBHOOK_URL"),
])
def test_bad_receiver_settings_name_the_variable_never_the_value(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as failed:
        receivers_from_settings(_settings(**values))
    assert message in str(failed.value) and "secret" not in str(failed.value)


def test_settings_hold_receiver_secrets_as_secret_str() -> None:
    s = _settings(slack_webhook_url="https://hooks.slack.com/services/T/B/x", telegram_bot_token="1:y")
    assert isinstance(s.slack_webhook_url, SecretStr) and isinstance(s.telegram_bot_token, SecretStr)
    assert s.alert_repeat_interval_s == 3600.0 and s.notify_trades is False


# -- the notifier ----------------------------------------------------------------------------------


def test_a_firing_alert_is_not_repeated_within_the_interval_unless_its_state_changes() -> None:
    clock, r = Clock(), Recorder()
    n = Notifier([r], NotifyConfig(repeat_interval_s=3600), metrics=Metrics(), clock=clock)
    assert n.notify(alert())
    clock.now += 3599
    assert not n.notify(alert())  # same rule, subject, state: within the interval
    assert n.notify(alert("stage_missing", "signals"))  # another subject
    assert n.notify(alert(state="resolved"))  # state changed
    assert not n.notify(alert(state="resolved"))
    assert n.notify(alert())  # firing again right after resolving
    clock.now += 3600
    assert n.notify(alert())  # the interval passed: a reminder
    assert n.counts["suppressed"] == 2


def test_alerts_arriving_together_go_in_one_message() -> None:
    r = Recorder()
    with Notifier([r], NotifyConfig(group_wait_s=0.3), metrics=Metrics()) as n:
        for subject in ("features", "signals", "sink"):
            n.notify(alert(subject=subject))
        assert n.flush(5)
        time.sleep(0.05)
        n.notify(alert(subject="bars"))
        assert n.flush(5)
    groups = [[i.alert.subject for i in m if i.alert] for m in r.sent]
    assert groups == [["features", "signals", "sink"], ["bars"]]


def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    m, release = Metrics(), threading.Event()
    r = Recorder(block=release)
    with Notifier([r], NotifyConfig(queue_size=2, group_wait_s=0), metrics=m) as n:
        n.notify(alert(subject="a"))  # taken by the receiver's thread, which hangs on it
        while not r.attempts:
            time.sleep(0.005)
        for subject in ("b", "c", "d"):
            n.notify(alert(subject=subject))
        assert n.counts["dropped"] == 1
        labels = {"stage": "watchdog", "kind": "NotificationDropped"}
        assert m.registry.get_sample_value("ops_errors_total", labels) == 1
        release.set()
        assert n.flush(5)
    assert [[i.alert.subject for i in sent if i.alert] for sent in r.sent] == [["a"], ["c", "d"]]


def test_retried_then_delivered_once_and_a_permanent_failure_is_not_retried() -> None:
    again = DeliveryError("HTTP 500", retry=True)
    flaky, broken = Recorder(again, again), Recorder(DeliveryError("HTTP 404", retry=False))
    with Notifier([flaky, broken], FAST, metrics=Metrics()) as n:
        n.notify(alert())
        assert n.flush(5)
    assert len(flaky.sent) == 1 and len(flaky.attempts) == 3
    assert broken.sent == [] and len(broken.attempts) == 1
    assert n.counts["retries"] == 2 and n.counts["failed"] == 1 and n.counts["messages"] == 1


def test_retry_after_is_honoured() -> None:
    r = Recorder(DeliveryError("HTTP 429", retry=True, retry_after=0.4))
    with Notifier([r], FAST, metrics=Metrics()) as n:
        n.notify(alert())
        assert n.flush(5)
    assert len(r.sent) == 1 and r.attempts[1] - r.attempts[0] >= 0.4


def test_notify_stays_fast_while_a_receiver_hangs_and_other_receivers_deliver() -> None:
    hang, other = threading.Event(), Recorder()
    stuck = Recorder(block=hang)
    n = Notifier([stuck, other], FAST, metrics=Metrics()).start()
    try:
        took, work = [], 0
        for i in range(300):
            start = time.perf_counter()
            n.notify(alert(subject=f"s{i}"))
            took.append(time.perf_counter() - start)
            work += 1  # the caller's own work goes on between notifications
        took.sort()  # ~20 us typical; the bounds are generous for a loaded machine
        assert took[150] < 0.001 and took[-1] < 0.5 and work == 300
        deadline = time.monotonic() + 5
        while sum(len(m) for m in other.sent) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(len(m) for m in other.sent) == 300 and stuck.sent == []
    finally:
        n.close(timeout=0.2)  # abandons the hanging one
        hang.set()


def test_the_first_notification_starts_the_threads() -> None:
    r = Recorder()
    n = Notifier([r], FAST, metrics=Metrics())  # as the watchdog builds it: from_settings, no start()
    n.notify(alert())
    assert n.flush(5) and len(r.sent) == 1
    n.close()


def test_compose_passes_unset_receivers_as_empty_strings_and_none_is_configured() -> None:
    empty = {name: "" for name in ("alert_webhook_url", "slack_webhook_url", "telegram_bot_token",
                                   "telegram_chat_id", "discord_webhook_url", "smtp_url",
                                   "alert_email_to", "alert_email_from")}
    assert receivers_from_settings(_settings(**empty)) == []


def test_notify_never_raises() -> None:
    n = Notifier([Recorder()], FAST, metrics=Metrics())
    assert n.notify(object()) is False  # type: ignore[arg-type]
    on = Notifier([Recorder()], NotifyConfig(notify_trades=True), metrics=Metrics())
    assert on.notify_trading("fill", None) is False  # type: ignore[arg-type]


def test_trading_notifications_are_opt_in() -> None:
    r = Recorder()
    off = Notifier([r], FAST, metrics=Metrics())
    assert not off.notify_trading("fill", "AAPL 10 @ 190.12")
    with Notifier([r], NotifyConfig(group_wait_s=0, notify_trades=True), metrics=Metrics()) as on:
        assert on.notify_trading("fill", "large-100k: BUY 10 AAPL @ 190.12\norder abc")
        assert not on.notify_trading("rumour", "x")
        assert on.flush(5)
    (item,) = r.sent[0]
    assert item.kind == "fill" and item.title == "[FILL] large-100k: BUY 10 AAPL @ 190.12"
    assert item.body == "order abc"


def test_a_failed_delivery_logs_kind_and_redacted_url_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, transport = _capture(403)
    r = SlackReceiver("https://hooks.slack.com/services/T0/B0/slack-token-xyz", transport=transport)
    with Notifier([r], FAST, metrics=Metrics()) as n:
        n.notify(alert())
        assert n.flush(5)
    assert "slack https://hooks.slack.com/… not delivered (HTTP 403)" in caplog.text
    assert "slack-token-xyz" not in caplog.text
