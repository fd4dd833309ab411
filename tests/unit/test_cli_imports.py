"""`ops-pipeline backtest` imports what a backtest uses: no Kafka, Postgres or web client, no model
library (each costs start-up time); every other command line registers every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.cli import _command_modules

ROOT = Path(__file__).resolve().parents[2]
UNUSED = ("confluent_kafka", "faust", "torch", "transformers", "psycopg", "aiohttp")


def test_only_the_backtest_command_is_registered_for_a_backtest() -> None:
    assert _command_modules(["backtest", "--bars", "replay.csv"]) == ["pipeline.backtest_cli"]
    assert _command_modules(["--debug", "--data-dir", "/tmp/x", "backtest"]) == ["pipeline.backtest_cli"]
    everything = _command_modules(None)
    assert "pipeline.bars_cli" in everything and "pipeline.backtest_cli" in everything
    for argv in ([], ["--help"], ["replay", "backtest"], ["--data-dir", "backtest", "replay"]):
        assert _command_modules(argv) == everything, argv


def test_a_backtest_process_does_not_import_the_clients_it_does_not_use() -> None:
    probe = ("import runpy, sys\n"
             "sys.argv = ['ops-pipeline', 'backtest', '--help']\n"
             "try:\n    runpy.run_module('pipeline.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             f"print(sorted(m for m in {UNUSED!r} if m in sys.modules))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "--bars" in done.stdout, done.stdout[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]
