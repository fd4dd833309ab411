"""`status` asks Alpaca REST which missing minutes are real gaps, and says when it could not.

Against FakeAlpacaRest through the real AlpacaBarHistory (alpaca-py over HTTP), no broker.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from connectors.alpaca_rest import AlpacaBarHistory, BarHistory, RawBars
from connectors.credentials import Credentials, CredentialSource
from pipeline.status import confirm_missing
from tests.fakes.alpaca_market import FakeAlpacaRest

KEY = ("PKSTATUS01", "status-secret-1")
OPEN = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)


def creds(key: tuple[str, str] = KEY) -> Credentials:
    return CredentialSource(file=None, key_id=SecretStr(key[0]), secret_key=SecretStr(key[1])).load()


def test_only_minutes_rest_has_a_bar_for_are_confirmed() -> None:
    with FakeAlpacaRest({KEY}) as rest:
        for m in (5, 7, 9):  # 6 had no trades: IEX has no bar; 9 is not missing
            rest.add("AAPL", OPEN + m * M)
        rest.add("MSFT", OPEN + 5 * M)
        missing = {"AAPL": [OPEN + m * M for m in (5, 6, 7)], "MSFT": [], "TSLA": [OPEN + 8 * M]}
        found, check = confirm_missing(
            missing, lambda: AlpacaBarHistory(creds(), feed="iex", url=rest.url), timeout_s=10
        )
        assert (found, check) == ({"AAPL": 2, "MSFT": 0, "TSLA": 0}, "rest")
        (request,) = rest.requests  # one session: one request, for the symbols missing minutes
        assert request["symbols"] == "AAPL,TSLA" and request["feed"] == "iex"


def test_nothing_missing_asks_nobody() -> None:
    def history() -> BarHistory:
        raise AssertionError("REST asked although nothing is missing")

    assert confirm_missing({"AAPL": []}, history, timeout_s=1) == ({"AAPL": 0}, "nothing missing")


def test_without_credentials_the_counts_stay_candidates() -> None:
    def history() -> BarHistory:
        source = CredentialSource(file=None, key_id=None, secret_key=None)
        return AlpacaBarHistory(source.load(), feed="iex")

    found, check = confirm_missing({"AAPL": [OPEN]}, history, timeout_s=1)
    assert found is None and check.startswith("candidates (no Alpaca credentials")


def test_refused_keys_fall_back_to_candidates() -> None:
    with FakeAlpacaRest({KEY}) as rest:
        bad = creds(("PKWRONG000", "wrong"))
        found, check = confirm_missing(
            {"AAPL": [OPEN]}, lambda: AlpacaBarHistory(bad, feed="iex", url=rest.url), timeout_s=10
        )
    assert (found, check) == (None, "candidates (Alpaca REST failed: HistoryAuthError)")


class _Hanging:
    def __init__(self) -> None:
        self.release = threading.Event()

    def fetch(self, symbols: list[str], start: datetime, end: datetime) -> RawBars:
        self.release.wait(10)
        return {}


def test_a_rest_call_that_hangs_is_abandoned_after_the_timeout() -> None:
    hanging = _Hanging()
    try:
        found, check = confirm_missing({"AAPL": [OPEN]}, lambda: hanging, timeout_s=0.2)
    finally:
        hanging.release.set()
    assert (found, check) == (None, "candidates (Alpaca REST timed out after 0.2s)")
