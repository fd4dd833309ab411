"""The dashboard's view-model: records in, the page's sections out (no broker, no server)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from pipeline.dashboard_view import DashboardView, equity_chart, first_failing_gate
from schemas.records import (
    Alert,
    BrokerAccount,
    BrokerPosition,
    EquityPoint,
    Execution,
    GateResult,
    MinuteClosed,
    Position,
)
from tests.samples import sample_records

DAY = date(2026, 11, 20)
T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)  # 09:30 in New York
S = sample_records(T0)


def _view() -> DashboardView:
    return DashboardView(["large-100k", "small-5k"], DAY, decisions=3)


def _account(view: DashboardView, name: str) -> dict:
    return next(a for a in view.accounts_section() if a["account"] == name)


def _point(minute: int, equity: float, account: str = "large-100k", day: int = 0) -> EquityPoint:
    return EquityPoint(account, T0 + timedelta(days=day, minutes=minute), equity, 1000.0, 0.0, 5.0, 1, "desk")


def _exec(
    rid: int,
    status: str,
    minute: int,
    *,
    account: str = "large-100k",
    gates: list[GateResult] | None = None,
    failure: str | None = None,
) -> Execution:
    base = S["executions"]
    assert isinstance(base, Execution)
    return replace(
        base,
        recommendation_id=f"r-{rid}",
        account=account,
        status=status,
        decided_at=T0 + timedelta(minutes=minute),
        gates=gates if gates is not None else base.gates,
        failure_reason=failure,
    )


@pytest.mark.parametrize(
    ("points", "path", "low", "high"),
    [
        ([], "", None, None),
        ([(T0, 100.0)], "M150.0 40.0", 100.0, 100.0),  # one point: mid-chart
        ([(T0, 100.0), (T0 + timedelta(minutes=1), 100.0)], "M0.0 40.0 L300.0 40.0", 100.0, 100.0),  # flat
        # out of order in, time order out; the low at the bottom (y=80), the high at the top (y=0)
        (
            [(T0 + timedelta(minutes=2), 110.0), (T0, 100.0), (T0 + timedelta(minutes=1), 90.0)],
            "M0.0 40.0 L150.0 80.0 L300.0 0.0",
            90.0,
            110.0,
        ),
    ],
)
def test_equity_chart_scales_time_and_value(
    points: list, path: str, low: float | None, high: float | None
) -> None:
    c = equity_chart(points)
    assert (c["path"], c["min"], c["max"]) == (path, low, high)


def test_the_chart_holds_today_and_the_money_comes_from_the_latest_point_until_a_broker_snapshot() -> None:
    view = _view()
    assert view.apply(_point(0, 100_000.0)) == ["accounts"]
    view.apply(_point(5, 100_500.0))
    view.apply(_point(0, 99_000.0, day=-1))  # yesterday's: not on today's chart
    acc = _account(view, "large-100k")
    assert acc["chart"]["first"] == 100_000.0 and acc["chart"]["last"] == 100_500.0
    assert (acc["source"], acc["equity"], acc["cash"], acc["buying_power"]) == (
        "equity",
        100_500.0,
        1000.0,
        None,
    )

    view.apply(S["broker.accounts"])
    acc = _account(view, "large-100k")
    assert (acc["source"], acc["equity"], acc["cash"], acc["buying_power"]) == (
        "broker",
        121_000.0,
        95_000.0,
        190_000.0,
    )
    snapshot = S["broker.accounts"]
    assert isinstance(snapshot, BrokerAccount)
    older = replace(snapshot, as_of=T0 - timedelta(hours=1), equity=1.0)
    view.apply(older)  # an older snapshot read later does not win
    assert _account(view, "large-100k")["equity"] == 121_000.0


def test_positions_are_the_brokers_latest_when_it_has_them_else_the_desks_open_ones() -> None:
    view = _view()
    desk = S["positions"]
    assert isinstance(desk, Position)
    view.apply(desk)
    view.apply(replace(desk, account="small-5k", status="CLOSED", qty=0.0))
    assert [p["symbol"] for p in _account(view, "large-100k")["positions"]] == ["AAPL"]
    assert _account(view, "small-5k")["positions"] == []

    held = S["broker.positions"]
    assert isinstance(held, BrokerPosition)
    view.apply(held)
    rows = _account(view, "large-100k")["positions"]
    assert [(p["symbol"], p["unrealized_pl"]) for p in rows] == [("QCOM260206C00150000", 220.0)]
    view.apply(replace(held, as_of=T0 + timedelta(minutes=1), qty=0.0))  # closed at the broker
    assert _account(view, "large-100k")["positions"] == []


def test_decisions_newest_first_a_later_record_replaces_and_skips_count_by_first_failing_gate() -> None:
    view = _view()
    conf = GateResult("confidence", False, 0.5, 0.7, "below the bar")
    cash = GateResult("cash", False, 10.0, 100.0, "not enough cash")
    ok = GateResult("max_trades", True, 1, 5, "ok")
    assert view.apply(_exec(1, "SUBMITTED", 1)) == ["decisions", "skips"]
    view.apply(_exec(1, "FILLED", 2))  # the same decision's fill
    view.apply(_exec(2, "SKIPPED", 3, gates=[ok, conf, cash], failure="confidence"))
    view.apply(_exec(3, "SKIPPED", 4, gates=[cash], failure="cash"))
    view.apply(_exec(3, "SKIPPED", 4, gates=[cash], failure="cash"))  # delivered twice: counted once
    view.apply(_exec(4, "SKIPPED", 5, account="small-5k", gates=[conf]))
    view.apply(_exec(5, "SKIPPED", 6 - 24 * 60, gates=[conf]))  # yesterday's
    decisions = view.decisions_section()
    assert [(d["recommendation_id"], d["status"]) for d in decisions] == [
        ("r-4", "SKIPPED"),
        ("r-3", "SKIPPED"),
        ("r-2", "SKIPPED"),
    ]  # capped at 3
    assert decisions[2]["gates"][1] == {
        "name": "confidence",
        "passed": False,
        "value": 0.5,
        "limit": 0.7,
        "reason": "below the bar",
    }
    assert view.skips_section() == [
        {"account": "large-100k", "reason": "cash", "count": 1},
        {"account": "large-100k", "reason": "confidence", "count": 1},
        {"account": "small-5k", "reason": "confidence", "count": 1},
    ]
    assert view.executions["large-100k:r-1"].status == "FILLED"


def test_first_failing_gate_falls_back_to_the_failure_reason() -> None:
    gates = [GateResult("max_trades", True, 1, 5, "ok"), GateResult("cash", False, 10.0, 100.0, "short")]
    assert first_failing_gate(_exec(1, "SKIPPED", 0, gates=gates, failure="cash: 10 < 100")) == "cash"
    assert first_failing_gate(_exec(1, "SKIPPED", 0, gates=[], failure="halted")) == "halted"
    assert first_failing_gate(_exec(1, "SKIPPED", 0, gates=[], failure=None)) == "unknown"


def test_alerts_show_while_firing_and_leave_when_resolved() -> None:
    view = _view()
    firing = S["alerts"]
    assert isinstance(firing, Alert)
    assert view.apply(firing) == ["alerts"]
    assert [a["rule"] for a in view.alerts_section()] == ["stage_missing"]
    view.apply(replace(firing, state="resolved", at=T0 + timedelta(minutes=3)))
    assert view.alerts_section() == []


def test_stages_combine_the_status_report_and_each_stages_latest_minute() -> None:
    view = _view()
    report = {
        "now": T0.isoformat(),
        "healthy": False,
        "market_open": True,
        "problems": ["MSFT: no bar"],
        "groups": [
            {
                "group": "ops-pipeline-signals",
                "lag": 7,
                "partitions_behind": 2,
                "oldest_wait_s": 3.5,
                "extra": 1,
            }
        ],
        "symbols": [{"symbol": "MSFT", "last_bar": None, "age_s": None, "missing_minutes": 12}],
    }
    assert view.set_status(report) == ["stages"]
    clock = S["clock.minutes"]
    assert isinstance(clock, MinuteClosed)
    view.apply(replace(clock, minute=T0 + timedelta(minutes=2)))
    view.apply(replace(clock, minute=T0 + timedelta(minutes=1)))  # an older minute from another partition
    st = view.stages_section()
    assert st["groups"] == [
        {"group": "ops-pipeline-signals", "lag": 7, "partitions_behind": 2, "oldest_wait_s": 3.5}
    ]
    assert st["problems"] == ["MSFT: no bar"] and st["healthy"] is False
    assert [(p["stage"], p["minute"]) for p in st["progress"]] == [
        ("signals", (T0 + timedelta(minutes=2)).isoformat())
    ]
    assert (
        view.set_status({"error": "no Kafka broker"}) and view.stages_section()["error"] == "no Kafka broker"
    )


def test_a_new_day_empties_the_chart_and_the_skips_and_the_snapshot_is_json() -> None:
    view = _view()
    view.apply(_point(0, 100.0))
    view.apply(_exec(1, "SKIPPED", 1, gates=[GateResult("cash", False, 1, 2, "no")]))
    assert view.roll(DAY) == []
    assert sorted(view.roll(DAY + timedelta(days=1))) == ["accounts", "skips"]
    assert _account(view, "large-100k")["chart"]["path"] == "" and view.skips_section() == []
    assert view.apply(object()) == []
    snap = json.loads(json.dumps(view.snapshot()))
    assert set(snap) == {"day", "accounts", "decisions", "skips", "alerts", "stages"}
    assert snap["day"] == "2026-11-21"
