"""`ops-pipeline backtest --clock recorded`: the dispatch agent's decisions replayed over the topics of
a live run (features, signals, broker and control records, and the minute closures on clock.minutes),
each decided at the time its closure recorded; the answer to "why did live skip this trade?".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opsinfra.settings import Settings
from schemas.codec import Codec
from schemas.records import Record
from schemas.topic_io import read_records
from schemas.topics import (
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    CLOCK,
    CONTROL,
    FEATURES,
    OPTION_QUOTES,
    SIGNALS,
    SYMBOL_PARTITIONS,
    TopicSpec,
)
from trading.calendar import TradingCalendar
from trading.gates import AccountConfig
from trading.ordering import FEATURES_INPUT, SIGNALS_INPUT
from trading.recorded_clock import RecordedRun, replay_recorded

# topic -> the kind trading.recorded_clock.replay_recorded takes it as
RECORDED: tuple[tuple[TopicSpec, str], ...] = (
    (FEATURES, FEATURES_INPUT), (SIGNALS, SIGNALS_INPUT), (CLOCK, "clock"), (BROKER_ACCOUNTS, "quiet"),
    (BROKER_POSITIONS, "quiet"), (OPTION_QUOTES, "quiet"), (CONTROL, "quiet"),
)


def read_recorded(settings: Settings, bootstrap: str, codec: Codec) -> list[tuple[str, int, int, Record]]:
    """Every decodable record the dispatch agent decides on, with its partition and offset."""
    out: list[tuple[str, int, int, Record]] = []
    for spec, kind in RECORDED:
        got = read_records(settings, bootstrap, codec, spec, quiet_s=0.5)
        got.sort(key=lambda mr: (mr[0].partition, mr[0].offset))
        out += [(kind, m.partition, m.offset, r) for m, r in got if isinstance(r, Record)]
    return out


def run_recorded(settings: Settings, bootstrap: str, codec: Codec, accounts: Sequence[AccountConfig],
                 out: Path, fmt: str = "csv") -> RecordedRun:
    """Replays the recorded run; writes executions.<fmt> and summary.json to `out`."""
    from pipeline.report import write_records
    from schemas.records import Execution

    run = replay_recorded(accounts, TradingCalendar(), read_recorded(settings, bootstrap, codec),
                          partitions=SYMBOL_PARTITIONS)
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / f"executions.{fmt}", Execution, run.executions, fmt)
    summary: dict[str, Any] = {"clock": "recorded", "executions": len(run.executions), "steps": run.steps,
                               "late_records": run.late, "held_records": run.held}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return run
