"""The fake Alpaca's option chain: the contracts endpoint of the trading API (/v2/options/contracts)
and the chain snapshots of the data API (/v1beta1/options/snapshots/{underlying}), with Alpaca's
query parameters, its validation, its default expiry bound and next_page_token pagination.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from trading.options import parse_occ

CONTRACTS_MAX_LIMIT = 10_000
CONTRACTS_DEFAULT_LIMIT = 100
SNAPSHOTS_MAX_LIMIT = 1_000
SNAPSHOTS_DEFAULT_LIMIT = 100


class Invalid(Exception):
    pass


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        return int(text.removeprefix("o:"))
    except ValueError:
        raise Invalid("invalid page_token") from None


def _date(q: Any, name: str) -> date | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise Invalid(f"invalid {name}: {raw!r} (expected YYYY-MM-DD)") from None


def _number(q: Any, name: str) -> float | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise Invalid(f"invalid {name}: {raw!r}") from None


def _limit(q: Any, default: int, maximum: int) -> int:
    raw = q.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"invalid limit: {raw!r}") from None
    if not 1 <= value <= maximum:
        raise Invalid(f"limit must be between 1 and {maximum}")
    return value


def _one_of(q: Any, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise Invalid(f"invalid {name}: {raw!r} (one of {', '.join(allowed)})")
    return str(raw)


def next_weekend(today: date) -> date:
    """Alpaca's default upper bound of expiration dates: the coming Saturday (a week on, from a
    Saturday or Sunday)."""
    days = (5 - today.weekday()) % 7
    return today + timedelta(days=days or 7)


def _occ_filter(q: Any) -> Callable[[str], bool]:
    """The filters both endpoints share, on what the OCC symbol says."""
    kind = _one_of(q, "type", ("call", "put"))
    exact, gte, lte = (_date(q, n) for n in ("expiration_date", "expiration_date_gte", "expiration_date_lte"))
    k_gte, k_lte = _number(q, "strike_price_gte"), _number(q, "strike_price_lte")
    root = q.get("root_symbol") or None

    def keep(symbol: str) -> bool:
        occ = parse_occ(symbol)
        return occ is not None and (kind is None or occ.option_type == kind) and (
            exact is None or occ.expiration == exact) and (gte is None or occ.expiration >= gte) and (
            lte is None or occ.expiration <= lte) and (k_gte is None or occ.strike >= k_gte) and (
            k_lte is None or occ.strike <= k_lte) and (root is None or occ.underlying == root)
    return keep


class OptionChainEndpoints:
    """Mixed into FakeAlpacaTrading: contracts (`option_contracts`) and the chain built from the
    snapshots set with set_option_quote."""

    option_snapshots: dict[str, dict[str, Any]]
    option_contracts: dict[str, dict[str, Any]]
    option_today: date | None = None  # "today" for the default expiry bound (None: the real date)

    @property
    def last_queries(self) -> dict[str, dict[str, str]]:
        """The query of the latest request to each of these endpoints, by path."""
        return self.__dict__.setdefault("_last_queries", {})

    def add_option_contract(self, contract: str, *, open_interest: int | str | None = 1_000,
                            ppind: bool = True, status: str = "active", tradable: bool = True,
                            close_price: float | None = None, style: str = "american") -> dict[str, Any]:
        """A listed contract, as the contracts endpoint sends it (numbers as strings)."""
        occ = parse_occ(contract)
        assert occ is not None, f"{contract!r} is not an OCC symbol"
        as_of = (self.option_today or datetime.now(UTC).date()) - timedelta(days=1)
        raw = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, contract)), "symbol": contract,
            "name": f"{occ.underlying} {occ.expiration:%b %d %Y} {occ.strike:g} {occ.option_type.title()}",
            "status": status, "tradable": tradable, "expiration_date": occ.expiration.isoformat(),
            "root_symbol": occ.underlying, "underlying_symbol": occ.underlying,
            "underlying_asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, occ.underlying)),
            "type": occ.option_type, "style": style, "strike_price": f"{occ.strike:g}", "multiplier": "100",
            "size": "100", "open_interest": None if open_interest is None else str(open_interest),
            "open_interest_date": as_of.isoformat() if open_interest is not None else None,
            "close_price": None if close_price is None else f"{close_price:g}",
            "close_price_date": as_of.isoformat() if close_price is not None else None, "ppind": ppind,
        }
        self.option_contracts[contract] = raw
        return raw

    @staticmethod
    def _invalid(status: int, message: str) -> web.Response:
        return web.json_response({"code": 40010001 if status == 422 else 40010000, "message": message},
                                 status=status)

    async def _option_contracts(self, request: web.Request) -> web.Response:
        q = request.query
        self.last_queries[request.path] = dict(q)
        try:
            limit = _limit(q, CONTRACTS_DEFAULT_LIMIT, CONTRACTS_MAX_LIMIT)
            start = _offset(q.get("page_token"))
            status = _one_of(q, "status", ("active", "inactive")) or "active"
            style = _one_of(q, "style", ("american", "european"))
            keep = _occ_filter(q)
            lte_given = q.get("expiration_date") or q.get("expiration_date_lte")
            default_lte = None if lte_given else next_weekend(self.option_today or datetime.now(UTC).date())
        except Invalid as exc:
            return self._invalid(422, str(exc))
        underlyings = {s for s in q.get("underlying_symbols", "").split(",") if s} or None
        found = [c for s, c in sorted(self.option_contracts.items())
                 if keep(s) and c["status"] == status and (style is None or c["style"] == style)
                 and (underlyings is None or c["underlying_symbol"] in underlyings)
                 and (default_lte is None or date.fromisoformat(c["expiration_date"]) <= default_lte)]
        page = found[start:start + limit]
        more = start + limit < len(found)
        return web.json_response({"option_contracts": page,
                                  "next_page_token": _token(start + limit) if more else None})

    async def _option_chain(self, request: web.Request) -> web.Response:
        q = request.query
        self.last_queries[request.path] = dict(q)
        underlying = request.match_info["underlying"]
        try:
            limit = _limit(q, SNAPSHOTS_DEFAULT_LIMIT, SNAPSHOTS_MAX_LIMIT)
            start = _offset(q.get("page_token"))
            _one_of(q, "feed", ("opra", "indicative"))
            keep = _occ_filter(q)
        except Invalid as exc:
            return self._invalid(400, str(exc))
        symbols = [s for s in sorted(self.option_snapshots)
                   if keep(s) and (occ := parse_occ(s)) is not None and occ.underlying == underlying]
        page = symbols[start:start + limit]
        more = start + limit < len(symbols)
        return web.json_response({"snapshots": {s: self.option_snapshots[s] for s in page},
                                  "next_page_token": _token(start + limit) if more else None})

    def add_option_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/options/contracts", self._option_contracts)
        app.router.add_get("/v1beta1/options/snapshots/{underlying}", self._option_chain)
