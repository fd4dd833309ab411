"""`ops-pipeline` as a new user meets it: each mistake is one `error:` line on stderr with exit 2
(configuration, input) or 1 (run time), no traceback unless asked for, no secret; bad bar rows are
counted by reason and kept in rejected.csv (backtest) or the DLQ (replay)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import DeadLetter
from schemas.topic_io import read_records
from schemas.topics import BARS
from tests.fakes import Cli, cli  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
SAMPLE_BARS = Path(__file__).resolve().parents[2] / "data" / "sample_session" / "bars.csv"
FOUR_ROWS = """symbol,ts,open,high,low,close,volume
AAPL,2025-11-20T14:30:00Z,1,2,0.5,1.5,10
AAPL,not-a-time,1,2,0.5,1.5,10
AAPL,2025-11-20T14:32:00Z,abc,2,0.5,1.5,10
AAPL,2025-11-20T14:33:00Z,1,0.5,2,1.5,-10
"""
SECRET = "hunter2-pw"


def ops(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, in an empty directory, with nothing configured or running."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_", "APCA_", "ALPACA_", "LOG_"))}
    clean.update(PIPELINE_DATA_DIR=str(tmp_path / "nothing"), PYTHONWARNINGS="ignore", COLUMNS="200", **env)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, env=clean,
                          capture_output=True, text=True, timeout=120)


def the_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "nocols.csv").write_text("symbol,ts,price\nAAPL,2025-11-20T14:30:00Z,1\n", "utf-8")
    (tmp_path / "four.csv").write_text(FOUR_ROWS, "utf-8")
    return tmp_path


CASES = {
    "missing bar file": (["backtest", "--bars", "missing.csv", "--out", "out"], {}, 2, "does not exist"),
    "bar file without the columns": (["backtest", "--bars", "nocols.csv", "--out", "out"], {}, 2,
                                     "missing column(s) open, high, low, close, volume"),
    "accounts not JSON": (["backtest", "--bars", str(SAMPLE_BARS), "--out", "out"],
                          {"PIPELINE_ACCOUNTS": "{bad json"}, 2, "PIPELINE_ACCOUNTS: not valid JSON"),
    "malformed DATABASE_URL": (["migrate"], {"DATABASE_URL": f"postgres://bad:{SECRET}@@@"}, 2,
                               "DATABASE_URL has more than one '@'"),
    "PostgreSQL unreachable": (["migrate"], {"DATABASE_URL": f"postgresql://u:{SECRET}@127.0.0.1:1/db"}, 1,
                               "PostgreSQL is unreachable"),
    "bad start time": (["backtest", "--bars", "four.csv", "--out", "out", "--start", "yesterday"], {}, 2,
                       "--start: not a date or time"),
    "replay missing file": (["replay", "--bars", "missing.csv"], {}, 2, "does not exist"),
    "backfill bad date": (["backfill", "--start", "2025-13-45", "--end", "2025-11-21"], {}, 2,
                          "--start: not an ISO-8601 date or time"),
    "explain bad id": (["explain", "not-a-uuid"], {}, 2, "not a recommendation id"),
    "status with nothing running": (["status"], {}, 2, "ops-pipeline up"),
    "migrate with nothing running": (["migrate"], {}, 2, "no PostgreSQL"),
    "unknown stage": (["run", "--only", "nosuch"], {}, 2, "unknown stage(s): nosuch (known: "),
    "unknown command": (["nosuch"], {}, 2, "No such command"),
    "contradictory settings": (["migrate"], {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, 2,
                               "KAFKA_SASL_MECHANISM"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_error_line_and_the_exit_code(files: Path, case: str) -> None:
    args, env, code, says = CASES[case]
    res = ops(files, *args, **env)
    assert res.returncode == code, res.stderr
    line = the_line(res)
    assert says in line and SECRET not in res.stdout + res.stderr


@pytest.mark.parametrize("how", [("--debug",), ()])
def test_debug_or_log_level_debug_shows_the_traceback_too(files: Path, how: tuple[str, ...]) -> None:
    env = {"DATABASE_URL": f"postgres://bad:{SECRET}@@@"} | ({} if how else {"LOG_LEVEL": "DEBUG"})
    res = ops(files, *how, "migrate", **env)
    assert res.returncode == 2
    assert "Traceback" in res.stderr and res.stderr.strip().splitlines()[-1].startswith("error: DATABASE_URL")
    assert SECRET not in res.stderr


def test_backtest_counts_and_keeps_the_rejected_rows(files: Path) -> None:
    res = ops(files, "backtest", "--bars", "four.csv", "--out", "out")
    assert res.returncode == 0, res.stderr
    summary = json.loads((files / "out" / "summary.json").read_text())
    assert summary["bars_processed"] == 1 and summary["bars_rejected"] == 3
    assert summary["rejected_by_reason"] == {"ts unparseable": 1, "open not a number": 1, "high < low": 1}
    assert ("3 row(s) rejected (see rejected.csv): 1 ts unparseable, 1 open not a number, 1 high < low"
            in res.stdout)
    with (files / "out" / "rejected.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row"], r["kind"], r["ts"], r["open"]) for r in rows] == [
        ("2", "ts unparseable", "not-a-time", "1"),
        ("3", "open not a number", "2025-11-20T14:32:00Z", "abc"),
        ("4", "high < low", "2025-11-20T14:33:00Z", "1"),
    ]
    assert rows[2]["reason"] == "high 0.5 < low 2.0" and rows[2]["volume"] == "-10"


def test_replay_counts_the_rejected_rows_by_reason(
    cli: Cli, provisioned: Settings, kafka_bootstrap: str, files: Path  # noqa: F811
) -> None:
    result = cli("replay", "--bars", str(files / "four.csv"), "--speed", "max")
    assert result.exit_code == 0, result.output
    assert "replayed 1 bar(s)" in result.output
    assert "3 row(s) rejected to" in result.output
    assert ": 1 ts unparseable, 1 open not a number, 1 high < low" in result.output
    letters = [r for _, r in read_records(provisioned, kafka_bootstrap, HeaderCodec(), BARS.dlq, quiet_s=0.3)]
    assert all(isinstance(d, DeadLetter) for d in letters)
    raw = sorted(json.loads(d.value or b"")["ts"] for d in letters)  # type: ignore[union-attr]
    assert raw == ["2025-11-20T14:32:00Z", "2025-11-20T14:33:00Z", "not-a-time"]
