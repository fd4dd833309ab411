"""The demo's runbook checks of decisions: 0 on a consistent run, and each one non-zero when fed the
inconsistency it looks for."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.runbook import decision_checks, execution_checks
from schemas.records import Execution, Recommendation
from tests.samples import sample_records

T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
ACCOUNTS = ("large-100k", "small-5k")
ONE_FINAL = "executions topic: (recommendation, account) without exactly one final decision"
NO_REC_ROW = "signals without a dispatch_recommendations row"
NO_EXEC_ROW = "(signal, account) without a dispatch_executions row"
ORPHAN = "dispatch_executions rows without a dispatch_recommendations row"


def _rec(i: int) -> Recommendation:
    rec = sample_records(T0)["signals"]
    assert isinstance(rec, Recommendation)
    return replace(rec, id=f"4b9d1c5e-0000-5000-8000-{i:012d}")


def _exec(rec: Recommendation, account: str, status: str = "SIMULATED") -> Execution:
    e = sample_records(T0)["executions"]
    assert isinstance(e, Execution)
    return replace(e, recommendation_id=rec.id, account=account, status=status)


def _consistent() -> tuple[list[Execution], list[Recommendation], set[str], set[tuple[str, str]]]:
    recs = [_rec(1), _rec(2)]
    execs = [_exec(r, a) for r in recs for a in ACCOUNTS]
    return execs, recs, {r.id for r in recs}, {(e.recommendation_id, e.account) for e in execs}


def _checks(execs: list[Execution], recs: list[Recommendation], rec_rows: set[str],
            exec_rows: set[tuple[str, str]]) -> dict[str, int]:
    return decision_checks(execs, recs, ACCOUNTS, rec_rows, exec_rows)


def test_a_consistent_run_passes_every_check() -> None:
    assert set(_checks(*_consistent()).values()) == {0}


@pytest.mark.parametrize("statuses", [
    ["SUBMITTED", "FILLED"],
    ["SUBMITTED", "SUBMITTED", "FAILED"],  # the write-ahead, the broker's acknowledgement, the end
    ["SKIPPED"],
])  # fmt: skip
def test_an_order_and_its_outcome_are_one_decision(statuses: list[str]) -> None:
    execs, recs, rec_rows, exec_rows = _consistent()
    first = execs[0]
    execs = [*(replace(first, status=s) for s in statuses), *execs[1:]]
    assert _checks(execs, recs, rec_rows, exec_rows)[ONE_FINAL] == 0


@pytest.mark.parametrize("statuses", [
    ["SIMULATED", "SIMULATED"],  # decided twice (a redelivery the desk did not recognise)
    ["SIMULATED", "SKIPPED"],  # two different decisions
    ["FILLED", "SUBMITTED"],  # an order after its outcome
    ["SUBMITTED"],  # never resolved
    ["SUBMITTED", "SIMULATED"],
])  # fmt: skip
def test_more_or_less_than_one_final_decision_is_counted(statuses: list[str]) -> None:
    execs, recs, rec_rows, exec_rows = _consistent()
    first = execs[0]
    execs = [*(replace(first, status=s) for s in statuses), *execs[1:]]
    assert _checks(execs, recs, rec_rows, exec_rows) == {ONE_FINAL: 1, NO_REC_ROW: 0, NO_EXEC_ROW: 0,
                                                         ORPHAN: 0}


def test_a_signal_without_its_recommendation_row_is_counted() -> None:
    execs, recs, rec_rows, exec_rows = _consistent()
    later = _rec(3)
    got = _checks(execs, [*recs, later], rec_rows, exec_rows)
    assert got[NO_REC_ROW] == 1
    assert got[NO_EXEC_ROW] == len(ACCOUNTS)  # and no account decided it


def test_an_account_that_did_not_decide_a_signal_is_counted() -> None:
    execs, recs, rec_rows, exec_rows = _consistent()
    exec_rows.discard((recs[1].id, ACCOUNTS[1]))
    got = _checks(execs, recs, rec_rows, exec_rows)
    assert got[NO_EXEC_ROW] == 1 and got[NO_REC_ROW] == 0 and got[ORPHAN] == 0


def test_an_execution_row_without_its_recommendation_row_is_counted() -> None:
    execs, recs, rec_rows, exec_rows = _consistent()
    rec_rows.discard(recs[0].id)
    got = _checks(execs, recs, rec_rows, exec_rows)
    assert got[ORPHAN] == len(ACCOUNTS) and got[NO_REC_ROW] == 1


def test_an_exit_needs_no_signal_but_does_need_its_rows() -> None:
    execs, recs, rec_rows, exec_rows = _consistent()
    exit_id = "9f0e0000-0000-5000-8000-000000000009"  # rule exits have ids of their own
    exit_ = replace(execs[0], recommendation_id=exit_id, intent="exit")
    rows = exec_rows | {(exit_id, exit_.account)}
    assert set(_checks([*execs, exit_], recs, rec_rows | {exit_id}, rows).values()) == {0}
    assert _checks([*execs, exit_], recs, rec_rows, rows)[ORPHAN] == 1

TWICE = "executions topic: (recommendation, account) decided more than once"
NO_BAR = "executions topic: records without bar_used_ts"
STUCK = "executions topic: SUBMITTED with no final status after 5 min"


def test_the_executions_topic_checks_pass_a_consistent_run() -> None:
    execs, _, _, _ = _consistent()
    assert execution_checks(execs) == {TWICE: 0, NO_BAR: 0, STUCK: 0}


@pytest.mark.parametrize(("statuses", "twice"), [
    (["SIMULATED"], 0), (["SUBMITTED", "SUBMITTED", "FILLED"], 0),
    (["SIMULATED", "SIMULATED"], 1), (["FILLED", "SUBMITTED"], 1), (["SKIPPED", "SIMULATED"], 1),
])  # fmt: skip
def test_a_decision_written_twice_is_counted(statuses: list[str], twice: int) -> None:
    execs, _, _, _ = _consistent()
    execs = [*(replace(execs[0], status=s) for s in statuses), *execs[1:]]
    assert execution_checks(execs)[TWICE] == twice


def test_an_execution_without_its_bar_is_counted() -> None:
    execs, _, _, _ = _consistent()
    assert execution_checks([replace(execs[0], bar_used_ts=None), *execs[1:]])[NO_BAR] == 1


def test_an_order_left_submitted_is_counted_after_five_minutes() -> None:
    execs, _, _, _ = _consistent()
    order = replace(execs[0], status="SUBMITTED")
    at = order.decided_at
    assert execution_checks([order], as_of=at + timedelta(minutes=4))[STUCK] == 0
    assert execution_checks([order], as_of=at + timedelta(minutes=6))[STUCK] == 1
    assert execution_checks([order, replace(order, status="FILLED")], as_of=at + timedelta(hours=1))[STUCK] == 0
