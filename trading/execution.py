"""How a decision becomes an Execution: simulated fills, sizing, deterministic order ids; shared by
the dispatch agent and the backtester, so a replayed fill is the one live simulate mode recorded.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import MISSING, field, fields, make_dataclass
from datetime import datetime
from typing import Any, TypeVar

from schemas.records import Execution, GateResult

ORDER_NAMESPACE = uuid.UUID("0f6c3b9e-2a41-5d7e-8c19-6b5e4d3a2f10")
EXIT_NAMESPACE = uuid.UUID("a3e1d7c2-94b8-5f06-b2d4-7c8e9f0a1b23")

SIMULATED = "SIMULATED"
SKIPPED = "SKIPPED"
SUBMITTED = "SUBMITTED"
FILLED = "FILLED"
FAILED = "FAILED"
FINAL_STATUSES = frozenset({SIMULATED, SKIPPED, FILLED, FAILED})
#: intents besides entry and exit: an exit of a position the pipeline did not open, and a quantity
#: adopted from the broker by reconcile (recorded FILLED, never ordered)
EXTERNAL_EXIT = "external_exit"
ADJUST = "adjust"
#: statuses in which an order exists or existed (a trade attempt, counted by the limits)
ACTIVE_STATUSES = frozenset({SIMULATED, SUBMITTED, FILLED})


R = TypeVar("R")
_TWINS: dict[type, Any] = {}


def new_record(cls: type[R], *values: Any) -> R:
    """cls(*values) for a frozen, slotted record, without paying object.__setattr__ per field.

    The values go into a mutable twin of identical layout whose class is then switched (CPython
    allows it between classes of the same slots), as the FeatureEngine does for Features:
    the result is an ordinary frozen instance. Values are positional, in field order; fields with
    defaults (appended by schema evolution) may be left out.
    """
    twin = _TWINS.get(cls)
    if twin is None:
        spec: list[Any] = []
        for f in fields(cls):  # type: ignore[arg-type]
            if f.default is not MISSING:
                spec.append((f.name, f.type, field(default=f.default)))
            elif f.default_factory is not MISSING:
                spec.append((f.name, f.type, field(default_factory=f.default_factory)))
            else:
                spec.append((f.name, f.type))
        twin = make_dataclass(f"_{cls.__name__}Twin", spec, bases=cls.__bases__, slots=True, eq=False,
                              repr=False, match_args=False)
        _TWINS[cls] = twin
    obj = twin(*values)
    obj.__class__ = cls
    out: R = obj
    return out


def uuid5_str(namespace: uuid.UUID, name: str) -> str:
    """str(uuid.uuid5(namespace, name)), without building UUID objects (ids are made per signal)."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def simulated_price(action: str, close: float, slippage_bps: float) -> float:
    """The bar close moved against us by the slippage: buys pay more, sells receive less."""
    slip = slippage_bps / 10_000.0
    return close * (1.0 + slip) if action == "BUY" else close * (1.0 - slip)


def entry_qty(notional: float, price: float, *, fractional: bool) -> float:
    """Quantity for a target notional: whole shares (at least 1, the gates judge the notional)
    or fractional shares rounded down to 1e-6."""
    if price <= 0 or not math.isfinite(price):
        return 0.0
    if fractional:
        return math.floor(notional / price * 1e6) / 1e6
    return float(max(1, math.floor(notional / price)))


def client_order_id(account: str, recommendation_id: str) -> str:
    """Alpaca's client_order_id for (account, recommendation): a redelivery submits the same id,
    which Alpaca refuses as a duplicate instead of placing a second order."""
    return uuid5_str(ORDER_NAMESPACE, f"{account}|{recommendation_id}")


def exit_id(account: str, entry_id: str, attempt: int = 0) -> str:
    """Id of a rule-triggered exit (stop, target, trailing, end of session) of one position:
    a redelivered bar cannot exit the same position twice."""
    return uuid5_str(EXIT_NAMESPACE, f"{account}|{entry_id}|{attempt}")


def exit_reason_of(execution: Execution) -> str | None:
    for g in execution.gates:
        if g.name == "exit_reason":
            return None if g.value is None else str(g.value)
    return None


def exit_gate(reason: str, detail: str) -> GateResult:
    """An exit's trigger, recorded after the gates so the execution explains itself."""
    return GateResult(name="exit_reason", passed=True, value=reason, limit=None, reason=detail)


def build_execution(
    *,
    recommendation_id: str,
    account: str,
    symbol: str,
    action: str,
    status: str,
    gates: list[GateResult],
    failure_reason: str | None,
    qty: float | None,
    price: float | None,
    bar_used_ts: datetime | None,
    mode: str,
    decided_at: datetime,
    intent: str,
    broker_order_id: str | None = None,
    with_client_order_id: bool = False,
) -> Execution:
    return new_record(
        Execution,
        recommendation_id,
        account,
        symbol,
        action,
        status,
        gates,
        failure_reason,
        qty,
        price,
        bar_used_ts,
        broker_order_id,
        client_order_id(account, recommendation_id) if with_client_order_id else None,
        mode,
        decided_at,
        intent,
    )
