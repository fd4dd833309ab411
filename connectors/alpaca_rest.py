"""Historical minute bars from Alpaca REST (alpaca-py), as raw JSON, so backfilled bars go through
the stream's own parse/validate and a rejected one keeps its payload for the DLQ; always the live feed.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Any, Protocol

from connectors.credentials import Credentials
from opsinfra.errors import ConnectorError

with warnings.catch_warnings():
    # alpaca.data imports alpaca.trading.stream, which imports websockets.legacy: deprecated
    # since websockets 14 and warned about once, at import. We never use that client.
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

RawBars = dict[str, list[dict[str, Any]]]


class HistoryAuthError(ConnectorError):
    """Alpaca REST refused the credentials (401/403): re-read them before the next request."""


class BarHistory(Protocol):
    def fetch(self, symbols: list[str], start: datetime, end: datetime) -> RawBars:
        """Minute bars per symbol with start <= t <= end (Alpaca's `end` is inclusive)."""
        ...


class AlpacaBarHistory:
    """BarHistory over StockHistoricalDataClient (paging via next_page_token is alpaca-py's)."""

    def __init__(self, credentials: Credentials, *, feed: str, url: str | None = None) -> None:
        self.feed = DataFeed(feed)
        self.url = url
        self._client = StockHistoricalDataClient(
            api_key=credentials.key_id.get_secret_value(),
            secret_key=credentials.secret_key.get_secret_value(),
            raw_data=True,
            url_override=url,
        )

    def fetch(self, symbols: list[str], start: datetime, end: datetime) -> RawBars:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        # alpaca-py turns aware datetimes into naive UTC and sends them back with +00:00
        request = StockBarsRequest(
            symbol_or_symbols=list(symbols),
            timeframe=TimeFrame.Minute,
            start=start,
            end=end,
            feed=self.feed,
            adjustment=Adjustment.RAW,  # what the stream sends
        )
        try:
            answer: Any = self._client.get_stock_bars(request)
        except APIError as exc:
            status = exc.status_code
            if status in (401, 403):
                raise HistoryAuthError(f"alpaca REST refused the credentials (HTTP {status})") from exc
            raise ConnectorError(f"alpaca REST bars failed (HTTP {status})") from exc
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors; bad JSON, ValueError
            raise ConnectorError(f"alpaca REST bars failed: {type(exc).__name__}") from exc
        if not isinstance(answer, dict):
            raise ConnectorError(f"alpaca REST bars: unexpected answer {type(answer).__name__}")
        return {str(sym): list(bars or []) for sym, bars in answer.items()}

    def __repr__(self) -> str:
        return f"AlpacaBarHistory(feed={self.feed.value!r}, url={self.url!r})"
