"""Alpaca paper orders: one POST per client_order_id (never retried blindly; an unknown outcome is
looked up, or left SUBMITTED for reconcile) and fills from the trade_updates stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from connectors.credentials import CredentialSource
from schemas.records import Execution
from trading.execution import FAILED, FILLED, SUBMITTED
from trading.options import parse_occ

log = logging.getLogger(__name__)

DUPLICATE_CODE = 40010001  # Alpaca's validation error code; with a 422 on POST: a client_order_id reused
_FILLED = frozenset({"filled"})
_DONE_UNFILLED = frozenset({"canceled", "expired", "rejected", "done_for_day", "stopped", "suspended"})
UPDATE_EVENTS_FINAL = frozenset({"fill", "canceled", "expired", "rejected", "done_for_day"})


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    """What Alpaca says about one order: a status of ours and what to record with it."""

    status: str  # SUBMITTED (open or unknown), FILLED or FAILED
    broker_order_id: str | None = None
    qty: float | None = None
    price: float | None = None
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.broker_order_id is not None or self.status != SUBMITTED

    def apply_to(self, execution: Execution) -> Execution:
        """The execution record with this outcome (decided_at and gates unchanged)."""
        changes: dict[str, Any] = {"status": self.status}
        if self.broker_order_id is not None:
            changes["broker_order_id"] = self.broker_order_id
        if self.status == FILLED:
            if self.qty is not None:
                changes["qty"] = self.qty
            if self.price is not None:
                changes["price"] = self.price
        if self.status == FAILED:
            changes["failure_reason"] = self.reason
        return replace(execution, **changes)


def _alpaca() -> Any:
    """alpaca-py's trading package, imported on first use: importing it imports
    alpaca.trading.stream, which imports the deprecated websockets.legacy (alpaca-py's doing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
        import alpaca.common.exceptions
        import alpaca.trading.client
        import alpaca.trading.enums
        import alpaca.trading.requests
        import alpaca.trading.stream
    return alpaca


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def outcome_of_order(order: Any) -> OrderOutcome:
    """Our status for an alpaca-py Order (or the equivalent dict)."""
    get = order.get if isinstance(order, dict) else (lambda k: getattr(order, k, None))
    status = get("status")
    status = getattr(status, "value", status)
    broker_id = str(get("id")) if get("id") is not None else None
    filled = _num(get("filled_qty")) or 0.0
    price = _num(get("filled_avg_price"))
    if status in _FILLED:
        return OrderOutcome(FILLED, broker_id, filled or _num(get("qty")), price)
    if status in _DONE_UNFILLED:
        if filled > 0:  # partly filled, then canceled or expired: what filled is the trade
            return OrderOutcome(FILLED, broker_id, filled, price, f"order {status} after a partial fill")
        return OrderOutcome(FAILED, broker_id, reason=f"order {status} at the broker")
    return OrderOutcome(SUBMITTED, broker_id)


def outcome_of_update(update: Any) -> OrderOutcome | None:
    """Our status from a trade_updates event, or None for events that change nothing of ours."""
    event = getattr(update, "event", None)
    event = getattr(event, "value", event)
    order = update.order
    if event in UPDATE_EVENTS_FINAL:
        return outcome_of_order(order)
    if event in ("new", "accepted", "pending_new"):
        return OrderOutcome(SUBMITTED, str(order.id))
    return None


MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is cut to this: the caller's next pass tries again


class _TimeoutAdapter(HTTPAdapter):
    """requests has no default timeout; an order call must never hang the dispatch agent. Every
    response is shown to `on_response` (Retry-After, call counts)."""

    def __init__(self, timeout: tuple[float, float],
                 on_response: Callable[[requests.Response], None] | None = None) -> None:
        super().__init__(max_retries=0)
        self._timeout = timeout
        self._on_response = on_response

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        response = super().send(request, **kwargs)
        if self._on_response is not None:
            self._on_response(response)
        return response


def retry_after_s(value: str | None, *, default: float, cap: float = MAX_RETRY_AFTER_S,
                  now: datetime | None = None) -> float:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), within [0, cap]."""
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return default
    return min(max(seconds, 0.0), cap)


def harden(client: Any, *, timeout_s: float,
           on_response: Callable[[requests.Response], None] | None = None) -> Any:
    """Timeouts on every request of an alpaca-py REST client, and its 429 retries wait what the
    answer's Retry-After asks: alpaca-py sleeps a fixed `_retry_wait` (3 s) and reads no header, so
    the header's value is put there before alpaca-py's retry loop sleeps on it."""
    default_wait = client._retry_wait

    def seen(response: requests.Response) -> None:
        if response.status_code == 429:
            client._retry_wait = retry_after_s(response.headers.get("Retry-After"), default=default_wait)
        if on_response is not None:
            on_response(response)

    adapter = _TimeoutAdapter((min(3.05, timeout_s), timeout_s), seen)
    client._session.mount("http://", adapter)
    client._session.mount("https://", adapter)
    return client


def trading_client(key_id: str, secret: str, *, url: str | None, timeout_s: float, raw_data: bool = False,
                   on_response: Callable[[requests.Response], None] | None = None) -> Any:
    """An alpaca-py TradingClient that times out and retries only 429 (a POST that was refused,
    so cannot have placed an order), after the wait the answer asks for; alpaca-py would
    otherwise also re-POST after a 504."""
    client = _alpaca().trading.client.TradingClient(key_id, secret, paper=True, url_override=url,
                                                    raw_data=raw_data)
    # TradingClient exposes neither setting: its RESTClient attributes are set directly.
    client._retry_codes = [429]
    return harden(client, timeout_s=timeout_s, on_response=on_response)


def broker_price(price: float) -> float:
    """A price Alpaca accepts: whole cents from $1, four decimals below (sub-penny is refused)."""
    return round(price, 2) if abs(price) >= 1.0 else round(price, 4)


class AlpacaOrders:
    """Order submission and lookup for the dispatch agent (blocking calls)."""

    def __init__(self, credentials: CredentialSource, *, url: str | None = None, timeout_s: float = 10.0,
                 client_factory: Callable[[str, str], Any] | None = None) -> None:
        self.credentials = credentials
        self.url = url
        self.timeout_s = timeout_s
        self._factory = client_factory or (
            lambda key, secret: trading_client(key, secret, url=url, timeout_s=timeout_s)
        )
        self._client: Any = None
        self._lock = threading.Lock()
        self.posts = 0  # POSTs sent, for tests and logs

    def _get_client(self, *, reload: bool = False) -> Any:
        with self._lock:
            if self._client is None or reload:
                creds = self.credentials.load(reason="auth failure" if reload else "start")
                self._client = self._factory(creds.key_id.get_secret_value(),
                                             creds.secret_key.get_secret_value())
            return self._client

    def submit(self, execution: Execution, *, take_profit: float | None = None,
               stop_loss: float | None = None) -> OrderOutcome:
        """POST the execution's order once; an unclear answer is resolved by a lookup.

        With both `take_profit` and `stop_loss`, a bracket: the entry and its two exits at Alpaca,
        good till canceled, so the stop outlives the session and a dispatch stage that is down."""
        alpaca = _alpaca()
        APIError = alpaca.common.exceptions.APIError  # noqa: N806
        requests_ = alpaca.trading.requests
        OrderSide, TimeInForce = alpaca.trading.enums.OrderSide, alpaca.trading.enums.TimeInForce  # noqa: N806
        coid = execution.client_order_id
        if coid is None or execution.qty is None:
            raise ValueError("an order needs a client_order_id and a quantity")
        option = parse_occ(execution.symbol) is not None
        if option and execution.qty != int(execution.qty):
            raise ValueError(f"an option order is for whole contracts, not {execution.qty}")
        fields: dict[str, Any] = {
            "symbol": execution.symbol,
            "qty": int(execution.qty) if option else execution.qty,
            "side": OrderSide.BUY if execution.action == "BUY" else OrderSide.SELL,
            "time_in_force": TimeInForce.DAY,
            "client_order_id": coid,
        }
        if take_profit is not None and stop_loss is not None:
            if option:
                raise ValueError("Alpaca takes no bracket orders for options")
            fields.update(
                order_class=alpaca.trading.enums.OrderClass.BRACKET,
                time_in_force=TimeInForce.GTC,
                take_profit=requests_.TakeProfitRequest(limit_price=broker_price(take_profit)),
                stop_loss=requests_.StopLossRequest(stop_price=broker_price(stop_loss)),
            )
        request = requests_.MarketOrderRequest(**fields)
        for attempt in (0, 1):
            client = self._get_client(reload=attempt > 0)
            try:
                self.posts += 1
                order = client.submit_order(request)
            except APIError as exc:
                status, code, message = _api_error(exc)
                if status in (401, 403) and attempt == 0 and _is_auth(status, code, message):
                    # refused before it was placed: new keys (a rotation), the same POST once more
                    log.warning("alpaca: %s on POST %s; reloading credentials", status, coid)
                    continue
                if status == 422 and code == DUPLICATE_CODE:
                    # the same client_order_id again (a redelivery, a restart), or another
                    # validation failure under the same code: the lookup tells them apart
                    try:
                        found = self.lookup(coid)
                    except (APIError, requests.RequestException) as lookup_exc:
                        log.warning("alpaca: lookup of %s failed (%s); outcome unknown", coid, lookup_exc)
                        return OrderOutcome(SUBMITTED)
                    if found is not None:
                        log.info("alpaca: %s already placed (%s); using it", coid, found.broker_order_id)
                        return found
                    return OrderOutcome(FAILED, reason=f"rejected: {message}")
                if status is not None and 400 <= status < 500 and status != 408:
                    return OrderOutcome(FAILED, reason=f"rejected ({status}): {message}")
                log.warning("alpaca: POST %s answered %s %s; looking the order up", coid, status, message)
                return self.lookup_or_unknown(coid)
            except requests.RequestException as exc:
                log.warning("alpaca: POST %s failed (%s); looking the order up", coid, type(exc).__name__)
                return self.lookup_or_unknown(coid)
            return outcome_of_order(order)
        return OrderOutcome(SUBMITTED)  # pragma: no cover - the loop always returns

    def lookup(self, client_order_id: str) -> OrderOutcome | None:
        """The order's outcome, None if Alpaca has no such order; raises when Alpaca cannot say."""
        APIError = _alpaca().common.exceptions.APIError  # noqa: N806
        client = self._get_client()
        try:
            order = client.get_order_by_client_id(client_order_id)
        except APIError as exc:
            status, _code, _message = _api_error(exc)
            if status == 404:
                return None
            raise
        return outcome_of_order(order)

    def lookup_or_unknown(self, client_order_id: str) -> OrderOutcome:
        """After an unclear POST: what the lookup says, or SUBMITTED without a broker id (unknown).

        "Not found" right after a POST is not proof (the POST may still be in flight), so it stays
        unknown here; a reconcile pass decides later (see DispatchHandler.reconcile)."""
        APIError = _alpaca().common.exceptions.APIError  # noqa: N806
        try:
            found = self.lookup(client_order_id)
        except (APIError, requests.RequestException) as exc:
            log.warning("alpaca: lookup of %s failed (%s); outcome unknown", client_order_id, exc)
            return OrderOutcome(SUBMITTED)
        return found if found is not None else OrderOutcome(SUBMITTED)


def _api_error(exc: Any) -> tuple[int | None, int | None, str]:
    status = exc.status_code
    try:
        body = json.loads(str(exc))
        return status, int(body.get("code")), str(body.get("message", ""))
    except (ValueError, TypeError, AttributeError):
        return status, None, str(exc)[:200]


def _is_auth(status: int | None, code: int | None, message: str) -> bool:
    """A refusal of the keys (read them again), not of the order: Alpaca also answers 403 with code
    40310000 for "insufficient buying power" and "insufficient qty available"."""
    text = message.lower()
    if "insufficient" in text:
        return False
    return status == 401 or code in (40110000, 40310000) or "unauthorized" in text or "forbidden" in text


class TradeUpdates:
    """alpaca-py's TradingStream on a thread of its own (its run() owns an event loop, #618);
    updates are handed to `sink` on the caller's loop."""

    def __init__(self, credentials: CredentialSource, *, url: str | None,
                 loop: asyncio.AbstractEventLoop, sink: Callable[[Any], None],
                 on_connect: Callable[[], None] | None = None) -> None:
        self.credentials = credentials
        self.url = url
        self.loop = loop
        self.sink = sink
        self.on_connect = on_connect  # after every (re)connect, on the caller's loop
        self.connects = 0
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        creds = self.credentials.load(reason="trade updates")
        stream = _alpaca().trading.stream.TradingStream(
            creds.key_id.get_secret_value(), creds.secret_key.get_secret_value(), paper=True,
            url_override=self.url,
        )

        async def handler(update: Any) -> None:
            self.loop.call_soon_threadsafe(self.sink, update)

        stream.subscribe_trade_updates(handler)
        # alpaca-py reconnects on its own and says nothing; wrapping its connect is how we learn of
        # a reconnect (the broker's state is read again after one: fills may have been missed)
        start_ws = stream._start_ws

        async def start_and_tell() -> None:
            await start_ws()
            self.connects += 1
            if self.on_connect is not None:
                self.loop.call_soon_threadsafe(self.on_connect)

        stream._start_ws = start_and_tell
        self._stream = stream
        self._thread = threading.Thread(target=stream.run, name="alpaca-trade-updates", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        stream, thread = self._stream, self._thread
        if stream is None or thread is None:
            return
        loop = getattr(stream, "_loop", None)
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(stream.stop_ws(), loop)
        thread.join(timeout_s)
