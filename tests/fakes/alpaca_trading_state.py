"""The fake Alpaca's state and rules, without the server: accounts, positions and orders; an order
validated as Alpaca validates it, routed, filled (partly), and its bracket legs; positions marked.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Key = tuple[str, str]
SUB_PENNY = "sub-penny increment does not fulfill minimum pricing criteria"
DEFAULT_KEY: Key = ("key", "secret")
DEFAULT_ASSETS = frozenset({"AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA", "SPY", "QQQ", "QCOM",
                            "AMD", "NFLX", "IWM"})
OPEN = frozenset({"new", "accepted", "pending_new", "partially_filled", "held", "accepted_for_bidding",
                  "pending_cancel", "pending_replace", "calculated"})
_OCC = re.compile(r"^[A-Z][A-Z0-9.]{0,5}\d{6}[CP]\d{8}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def is_option(symbol: str) -> bool:
    return bool(_OCC.match(symbol))


def _s(value: float | None) -> str | None:
    return None if value is None else f"{value:.10g}"


def _sub_penny(price: float) -> bool:
    places = 100 if price >= 1.0 else 10_000
    return abs(price * places - round(price * places)) > 1e-6


@dataclass
class FakeOrder:
    data: dict[str, Any]
    account: FakeAccount | None = None
    seq: int = 0
    legs: list[FakeOrder] = field(default_factory=list)

    @property
    def client_order_id(self) -> str:
        return str(self.data["client_order_id"])

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def remaining(self) -> float:
        return float(self.data["qty"] or 0) - float(self.data["filled_qty"] or 0)

    def json(self, *, nested: bool = False) -> dict[str, Any]:
        out = dict(self.data)
        out["legs"] = [leg.json() for leg in self.legs] if nested and self.legs else None
        return out


@dataclass
class FakePosition:
    symbol: str
    qty: float  # signed
    avg_entry_price: float
    asset_class: str | None = None  # default: us_option for an OCC symbol, else us_equity
    exchange: str | None = None


@dataclass
class FakeAccount:
    key: Key
    cash: float = 100_000.0
    buying_power: float = 200_000.0
    options_buying_power: float | None = 100_000.0
    last_equity: float | None = None
    options_approved_level: int | None = 2
    status: str = "ACTIVE"
    shorting_enabled: bool = True
    trading_blocked: bool = False
    account_number: str = field(default_factory=lambda: f"PA{uuid.uuid4().int % 10**10:010d}")
    positions: dict[str, FakePosition] = field(default_factory=dict)
    orders: dict[str, FakeOrder] = field(default_factory=dict)  # by id, bracket legs included
    by_client_id: dict[str, FakeOrder] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = str(uuid.uuid4())
        if self.last_equity is None:
            self.last_equity = self.cash


@dataclass(frozen=True)
class Refusal:
    """Alpaca's answer to an order it will not accept: HTTP status, Alpaca's code, message, extras."""

    status: int
    code: int
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


def _refuse(status: int, code: int, message: str, **extra: Any) -> Refusal:
    return Refusal(status, code, message, extra)


class BrokerState:
    """The accounts (per key pair), their orders and the marks, and the rules that change them;
    FakeAlpacaTrading serves it and sends each order event with `_emit`."""

    keys: set[Key]
    fill: str
    prices: dict[str, float]
    assets: set[str]

    def _init_state(self) -> None:
        self.accounts: dict[Key, FakeAccount] = {}
        self.orders: dict[str, FakeOrder] = {}  # every account's, by id
        self.by_client_id: dict[str, FakeOrder] = {}  # every account's (tests use one client id once)
        self.option_quotes: dict[str, dict[str, Any]] = {}  # contract -> raw latest quote ("bp", "ap"...)
        self.option_snapshots: dict[str, dict[str, Any]] = {}  # contract -> raw snapshot
        self.option_contracts: dict[str, dict[str, Any]] = {}  # contract -> raw listed contract
        self._seq = 0

    def _emit(self, order: FakeOrder, event: str, **extra: Any) -> None:
        """An order event on the trade_updates stream of the order's account."""
        raise NotImplementedError

    # -- accounts -------------------------------------------------------------------------------

    def account(self, key: Key = DEFAULT_KEY) -> FakeAccount:
        """The account of a key pair (made, with default balances, on first use)."""
        self.keys.add(key)
        if key not in self.accounts:
            self.accounts[key] = FakeAccount(key)
        return self.accounts[key]

    def add_account(self, key_id: str, secret: str, **fields: Any) -> FakeAccount:
        acct = FakeAccount((key_id, secret), **fields)
        self.keys.add(acct.key)
        self.accounts[acct.key] = acct
        return acct

    def rotate_keys(self, old: Key, new: Key) -> None:
        """The account's key pair is replaced: the old one now answers 401."""
        acct = self.account(old)
        self.keys.discard(old)
        self.keys.add(new)
        acct.key = new
        self.accounts[new] = self.accounts.pop(old)

    def orders_for(self, client_order_id: str) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    # -- orders ---------------------------------------------------------------------------------

    def price_of(self, order_or_symbol: FakeOrder | str) -> float:
        symbol = order_or_symbol if isinstance(order_or_symbol, str) else order_or_symbol.data["symbol"]
        if symbol in self.prices:
            return self.prices[symbol]
        quote = self.option_quotes.get(symbol, {})
        if quote.get("bp") is not None and quote.get("ap") is not None:
            return (float(quote["bp"]) + float(quote["ap"])) / 2.0
        return 1.0 if is_option(symbol) else 100.0

    def _known(self, symbol: str) -> bool:
        return symbol in self.assets or symbol in self.prices or symbol in self.option_quotes

    def _account_for(self, key: Key) -> FakeAccount | None:
        return self.account(key) if key in self.keys else None

    def _store(self, acct: FakeAccount, body: dict[str, Any]) -> FakeOrder:
        order = self._new_order(acct, body)
        if body.get("order_class") == "bracket":
            exit_side = "sell" if body["side"] == "buy" else "buy"
            for kind, price_field, price in (("limit", "limit_price", body["take_profit"]["limit_price"]),
                                             ("stop", "stop_price", body["stop_loss"]["stop_price"])):
                leg_body = {**body, "side": exit_side, "type": kind, "client_order_id": str(uuid.uuid4()),
                            price_field: price}
                leg = self._new_order(acct, leg_body)
                leg.data["status"] = "held"
                order.legs.append(leg)
        for o in (order, *order.legs):
            acct.orders[o.id] = self.orders[o.id] = o
            acct.by_client_id[o.client_order_id] = self.by_client_id[o.client_order_id] = o
        return order

    def _new_order(self, acct: FakeAccount, body: dict[str, Any]) -> FakeOrder:
        now = now_iso()
        qty = body.get("qty")
        symbol = body["symbol"]
        self._seq += 1
        data = {
            "id": str(uuid.uuid4()), "client_order_id": body["client_order_id"], "created_at": now,
            "updated_at": now, "submitted_at": now, "filled_at": None, "expired_at": None,
            "canceled_at": None, "failed_at": None, "replaced_at": None, "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "symbol": symbol,
            "asset_class": "us_option" if is_option(symbol) else "us_equity", "notional": None,
            "qty": None if qty is None else _s(float(qty)), "filled_qty": "0", "filled_avg_price": None,
            "order_class": body.get("order_class") or "simple", "order_type": body.get("type", "market"),
            "type": body.get("type", "market"), "side": body["side"],
            "time_in_force": body.get("time_in_force", "day"),
            "limit_price": _s(body.get("limit_price")), "stop_price": _s(body.get("stop_price")),
            "status": "accepted", "extended_hours": False,
        }
        return FakeOrder(data, acct, self._seq)

    def _execute(self, order: FakeOrder, qty: float, price: float) -> None:
        """Fills `qty` of `order` at `price`: the order, the position, cash and buying power."""
        acct = order.account
        assert acct is not None
        d = order.data
        done = float(d["filled_qty"] or 0)
        avg = float(d["filled_avg_price"] or 0)
        total = done + qty
        d["filled_qty"] = _s(total)
        d["filled_avg_price"] = _s((done * avg + qty * price) / total)
        d["status"] = "filled" if total >= float(d["qty"]) - 1e-9 else "partially_filled"
        d["updated_at"] = now_iso()
        if d["status"] == "filled":
            d["filled_at"] = d["updated_at"]
        symbol = d["symbol"]
        signed = qty if d["side"] == "buy" else -qty
        mult = 100.0 if is_option(symbol) else 1.0
        flow = signed * price * mult
        acct.cash -= flow
        acct.buying_power -= flow
        if acct.options_buying_power is not None:
            acct.options_buying_power -= flow
        pos = acct.positions.get(symbol)
        held = pos.qty if pos else 0.0
        new = held + signed
        if abs(new) < 1e-9:
            acct.positions.pop(symbol, None)
        elif pos is None or held * new < 0:  # opened, or flipped: the remainder at this price
            acct.positions[symbol] = FakePosition(symbol, new, price, pos.asset_class if pos else None)
        else:
            if abs(new) > abs(held):
                pos.avg_entry_price = (abs(held) * pos.avg_entry_price + qty * price) / abs(new)
            pos.qty = new
        event = "fill" if d["status"] == "filled" else "partial_fill"
        self._emit(order, event, execution_id=str(uuid.uuid4()), price=_s(price), qty=_s(qty),
                   position_qty=_s(new))
        if d["status"] == "filled":
            for leg in order.legs:  # a bracket's exits go live once its entry filled
                if leg.status == "held":
                    leg.data["status"] = "new"
                    self._emit(leg, "new")

    def _close(self, order: FakeOrder, status: str) -> None:
        d = order.data
        d["status"] = status
        d["updated_at"] = now_iso()
        d["canceled_at" if status == "canceled" else "expired_at"] = d["updated_at"]
        self._emit(order, status)
        for leg in order.legs:
            if leg.status in OPEN:
                self._close(leg, status)

    def _routed(self, order: FakeOrder) -> None:
        """Accepted -> new at the venue ("new" on the stream), then filled unless held."""
        if order.status != "accepted":
            return
        order.data["status"] = "new"
        self._emit(order, "new")
        if self.fill == "immediate":
            self._execute(order, order.remaining, self.price_of(order))

    # -- validation -----------------------------------------------------------------------------

    def _refusal(self, acct: FakeAccount, body: dict[str, Any]) -> Refusal | None:
        """Alpaca's answer to an order it will not accept, or None."""
        symbol, side, kind = body.get("symbol"), body.get("side"), body.get("type", "market")
        if side not in ("buy", "sell"):
            return _refuse(422, 40010001, f"invalid side: {side!r}")
        if kind not in ("market", "limit", "stop", "stop_limit", "trailing_stop"):
            return _refuse(422, 40010001, f"invalid order type: {kind!r}")
        try:
            qty = float(body["qty"])
        except (KeyError, TypeError, ValueError):
            return _refuse(422, 40010001, "qty is required")
        if qty <= 0:
            return _refuse(422, 40010001, "qty must be > 0")
        if not isinstance(symbol, str) or not self._known(symbol):
            return _refuse(422, 40010001, f"asset \"{symbol}\" not found")
        option = is_option(symbol)
        if option and qty != int(qty):
            return _refuse(422, 40010001, "qty must be a whole number of contracts")
        for name in ("limit_price", "stop_price"):
            if body.get(name) is not None and _sub_penny(float(body[name])):
                return _refuse(422, 42210000, f"invalid {name} {body[name]}. {SUB_PENNY}")
        base = float(body.get("limit_price") or self.price_of(symbol))
        if body.get("order_class") == "bracket":
            refused = self._bracket_refusal(body, side, base, option)
            if refused is not None:
                return refused
        mult = 100.0 if option else 1.0
        live = [o for o in acct.orders.values() if o.status in OPEN and o.data["symbol"] == symbol]
        if side == "sell":
            pos = acct.positions.get(symbol)
            held_long = pos.qty if pos is not None and pos.qty > 0 else 0.0
            parents = {self._oco_root(acct, o): o.remaining for o in live if o.data["side"] == "sell"}
            available = held_long - sum(parents.values())
            if held_long > 0 or parents or not acct.shorting_enabled or option:
                if qty > available + 1e-9:
                    return _refuse(403, 40310000, f"insufficient qty available for order (requested: "
                                       f"{qty:g}, available: {max(available, 0.0):g})", symbol=symbol,
                                       available=_s(max(available, 0.0)), existing_qty=_s(held_long),
                                       held_for_orders=_s(sum(parents.values())))
            return None
        power = acct.buying_power
        if option and acct.options_buying_power is not None:
            power = acct.options_buying_power
        pending = sum(o.remaining * float(o.data["limit_price"] or self.price_of(o)) * mult
                      for o in acct.orders.values() if o.status in OPEN and o.data["side"] == "buy"
                      and is_option(o.data["symbol"]) == option)
        if self.fill == "reject" or qty * base * mult > power - pending + 1e-6:
            return _refuse(403, 40310000, "insufficient buying power", buying_power=_s(power),
                               cost_basis=_s(qty * base * mult))
        return None

    def _bracket_refusal(self, body: dict[str, Any], side: str, base: float,
                         option: bool) -> Refusal | None:
        if option:
            return _refuse(422, 42210000, "bracket orders are not supported for options")
        try:
            take = float(body["take_profit"]["limit_price"])
            stop = float(body["stop_loss"]["stop_price"])
        except (KeyError, TypeError, ValueError):
            return _refuse(422, 40010001, "bracket orders require take_profit.limit_price and "
                                              "stop_loss.stop_price")
        for name, price in (("take_profit.limit_price", take), ("stop_loss.stop_price", stop)):
            if _sub_penny(price):
                return _refuse(422, 42210000, f"invalid {name} {price}. {SUB_PENNY}")
        sign = 1 if side == "buy" else -1  # a buy's target is above the base price, its stop below
        if sign * (take - base) < 0.01 - 1e-9:
            bound = ">= base_price + 0.01" if sign > 0 else "<= base_price - 0.01"
            return _refuse(422, 42210000, f"take_profit.limit_price must be {bound}")
        if sign * (base - stop) < 0.01 - 1e-9:
            bound = "<= base_price - 0.01" if sign > 0 else ">= base_price + 0.01"
            return _refuse(422, 42210000, f"stop_loss.stop_price must be {bound}")
        return None

    @staticmethod
    def _oco_root(acct: FakeAccount, order: FakeOrder) -> str:
        """Bracket legs hold the position once between them (one-cancels-other)."""
        for parent in acct.orders.values():
            if order in parent.legs:
                return parent.id
        return order.id

    # -- marks ----------------------------------------------------------------------------------

    def _equity(self, acct: FakeAccount) -> tuple[float, float, float]:
        values = [self._position_json(p)["market_value"] for p in acct.positions.values()]
        long_mv = sum(float(v) for v in values if float(v) > 0)
        short_mv = sum(float(v) for v in values if float(v) < 0)
        return acct.cash + long_mv + short_mv, long_mv, short_mv

    def _account_json(self, acct: FakeAccount) -> dict[str, Any]:
        equity, long_mv, short_mv = self._equity(acct)
        return {
            "id": acct.id, "account_number": acct.account_number, "status": acct.status,
            "crypto_status": "ACTIVE", "currency": "USD", "buying_power": _s(acct.buying_power),
            "regt_buying_power": _s(acct.buying_power), "non_marginable_buying_power": _s(acct.cash),
            "cash": _s(acct.cash), "accrued_fees": "0", "portfolio_value": _s(equity), "equity": _s(equity),
            "last_equity": _s(acct.last_equity), "long_market_value": _s(long_mv),
            "short_market_value": _s(short_mv), "initial_margin": "0", "maintenance_margin": "0",
            "last_maintenance_margin": "0", "sma": "0", "multiplier": "2",
            "shorting_enabled": acct.shorting_enabled, "trading_blocked": acct.trading_blocked,
            "transfers_blocked": False, "account_blocked": False, "trade_suspended_by_user": False,
            "created_at": "2024-01-02T14:30:00Z", "options_buying_power": _s(acct.options_buying_power),
            "options_approved_level": acct.options_approved_level,
            "options_trading_level": acct.options_approved_level,
        }

    def _position_json(self, pos: FakePosition) -> dict[str, Any]:
        option = is_option(pos.symbol)
        mult = 100.0 if option else 1.0
        price = self.prices.get(pos.symbol)
        if price is None:
            price = self.price_of(pos.symbol) if pos.symbol in self.option_quotes else pos.avg_entry_price
        market_value = pos.qty * price * mult
        cost_basis = pos.qty * pos.avg_entry_price * mult
        pl = market_value - cost_basis
        plpc = pl / abs(cost_basis) if cost_basis else 0.0
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, pos.symbol)), "symbol": pos.symbol,
            "exchange": pos.exchange if pos.exchange is not None else ("" if option else "NASDAQ"),
            "asset_class": pos.asset_class or ("us_option" if option else "us_equity"),
            "asset_marginable": not option, "qty": _s(pos.qty), "qty_available": _s(pos.qty),
            "avg_entry_price": _s(pos.avg_entry_price), "side": "long" if pos.qty > 0 else "short",
            "market_value": _s(market_value), "cost_basis": _s(cost_basis), "unrealized_pl": _s(pl),
            "unrealized_plpc": _s(plpc), "unrealized_intraday_pl": _s(pl),
            "unrealized_intraday_plpc": _s(plpc),
            "current_price": _s(price), "lastday_price": _s(pos.avg_entry_price),
            "change_today": _s(price / pos.avg_entry_price - 1 if pos.avg_entry_price else 0.0),
        }
