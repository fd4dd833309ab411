"""The CLI's one error line and exit code, settings errors that name the variable but never its value,
and rejected bar rows counted by the kind of reason."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import typer
from confluent_kafka import KafkaError, KafkaException

from connectors import replay as rp
from opsinfra.errors import ConfigError, ConnectorError, InputError, PipelineError, ServiceError
from opsinfra.logs import scrub
from opsinfra.settings import Settings, check_database_url
from pipeline.boundary import describe

FOUR_ROWS = """symbol,ts,open,high,low,close,volume
AAPL,2025-11-20T14:30:00Z,1,2,0.5,1.5,10
AAPL,not-a-time,1,2,0.5,1.5,10
AAPL,2025-11-20T14:32:00Z,abc,2,0.5,1.5,10
AAPL,2025-11-20T14:33:00Z,1,0.5,2,1.5,-10
"""


@pytest.mark.parametrize(
    ("exc", "line", "code"),
    [
        (ConfigError("no Kafka broker"), "error: no Kafka broker", 2),
        (ConfigError("X is bad", hint="fix X"), "error: X is bad (fix X)", 2),
        (InputError("f.csv: missing column(s) open", hint="add them"),
         "error: f.csv: missing column(s) open (add them)", 2),
        (ServiceError("broker did not start"),
         "error: broker did not start (rerun with --debug for the traceback)", 1),
        (ConnectorError("Alpaca refused the credentials", hint="check APCA_API_KEY_ID"),
         "error: Alpaca refused the credentials (check APCA_API_KEY_ID)", 1),
        (PipelineError("first line\n\tsecond line\n"),
         "error: first line; second line (rerun with --debug for the traceback)", 1),
        (typer.BadParameter("bad value"), "error: Invalid value: bad value (see `ops-pipeline --help`)", 2),
        (KeyError("x"),
         "error: unexpected KeyError: 'x' (a bug: rerun with --debug and report the traceback)", 1),
    ],
)
def test_one_line_and_the_exit_code(exc: BaseException, line: str, code: int) -> None:
    assert describe(exc) == (line, code)


def test_outside_services_are_runtime_failures_with_what_to_check() -> None:
    line, code = describe(psycopg.OperationalError("connection refused"))
    assert code == 1 and line.startswith("error: PostgreSQL is unreachable: connection refused (")
    assert "DATABASE_URL" in line
    line, code = describe(psycopg.errors.UndefinedTable("relation lane_telemetry does not exist"))
    assert code == 1 and "ops-pipeline migrate" in line
    line, code = describe(KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure")))
    assert code == 1 and "Broker transport failure" in line and "KAFKA_BOOTSTRAP_SERVERS" in line


def test_input_errors_are_value_errors_too() -> None:
    assert issubclass(InputError, ValueError) and InputError.exit_code == ConfigError.exit_code == 2
    assert PipelineError("x").hint is None and PipelineError("x", hint="y").hint == "y"


def test_scrub_removes_url_passwords_and_given_secrets() -> None:
    text = "postgresql://ops:db-pw-555@db:5432/ops said: key PKTESTKEY and s3cret"
    assert scrub(text, ["PKTESTKEY", "s3cret", ""]) == (
        "postgresql://ops:***@db:5432/ops said: key *** and ***")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"METRICS_PORT": "abc"}, "METRICS_PORT: Input should be a valid integer"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM is required"),
        ({"DATABASE_URL": "postgres://bad:url-pw@@@"}, "DATABASE_URL has more than one '@'"),
        ({"DATABASE_URL": "mysql://u:db-pw-555@h/d"}, "DATABASE_URL must start with postgresql://"),
        ({"DATABASE_URL": "postgresql://u:db-pw-555@h/d?nosuchoption=1"}, "DATABASE_URL does not parse"),
        ({"DATABASE_URL": "u:db-pw-555@h/d"}, "DATABASE_URL does not parse"),
    ],
)
def test_settings_errors_name_the_variable_never_the_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], named: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as err:
        Settings.from_env()
    line, code = describe(err.value)
    assert code == 2 and named in line and "(fix it in the environment or .env)" in line
    assert "url-pw" not in line and "db-pw-555" not in line


def test_valid_database_urls_pass() -> None:
    for url in ("postgresql://ops:pw@db.internal:5432/ops", "postgres:///ops", "host=db dbname=ops",
                "postgresql://u@h/db?options=-csearch_path%3Dx"):
        check_database_url(url)


def test_secret_values_include_a_url_password_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://ops:p%40ss-word@db/ops")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "alpaca-secret")
    secrets = Settings.from_env().secret_values()
    assert {"p%40ss-word", "p@ss-word", "alpaca-secret"} <= set(secrets)


def test_rejected_rows_are_counted_by_kind_with_their_row_number(tmp_path: Path) -> None:
    path = tmp_path / "four.csv"
    path.write_text(FOUR_ROWS, "utf-8")
    prep = rp.prepare_rows(rp.load_bar_file(path))
    assert len(prep.bars) == 1
    assert [(r.number, r.label) for r in prep.rejected] == [
        (2, "ts unparseable"), (3, "open not a number"), (4, "high < low")
    ]
    assert prep.rejected[2].reason == "high 0.5 < low 2.0"  # the first rule broken, values kept
    assert prep.rejected_by_reason() == {"ts unparseable": 1, "open not a number": 1, "high < low": 1}
    assert rp.counts_text({"high < low": 2, "ts unparseable": 1}) == "2 high < low, 1 ts unparseable"


def test_kinds_fold_rows_that_differ_only_in_their_values(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("symbol,ts,open,high,low,close,volume\n"
                    "AAPL,2025-11-20T14:30:00Z,1,0.5,2,1,10\nMSFT,2025-11-20T14:30:00Z,5,4,6,5,10\n", "utf-8")
    prep = rp.prepare_rows(rp.load_bar_file(path))
    assert len({r.reason for r in prep.rejected}) == 2 and prep.rejected_by_reason() == {"high < low": 2}


def test_unreadable_bar_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        rp.load_bar_file(tmp_path / "missing.csv")
    header_only = tmp_path / "header.csv"
    header_only.write_text("symbol,ts,close\n", "utf-8")
    with pytest.raises(InputError, match="missing column"):
        rp.load_bar_file(header_only)
    not_parquet = tmp_path / "bars.parquet"
    not_parquet.write_text("not parquet", "utf-8")
    with pytest.raises(InputError, match="not a readable bar file"):
        rp.load_bar_file(not_parquet)
