"""`ops-pipeline up` end to end: embedded Tansu + embedded PostgreSQL, found by other commands,
one `up` per data dir, and nothing left running after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.topics import ALL_TOPICS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SCHEMA_REGISTRY_URL")
    }
    env.update(PIPELINE_DATA_DIR=str(data_dir), COLUMNS="200", PYTHONWARNINGS="ignore")
    return env


def _cli(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=tmp_cwd(data_dir),
        env=_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tmp_cwd(data_dir: Path) -> Path:
    cwd = data_dir.parent / "cwd"  # no .env file from the repo is picked up
    cwd.mkdir(exist_ok=True)
    return cwd


def _processes_under(path: Path) -> list[int]:
    """PIDs whose command line mentions path (the broker's log dir, postgres' PGDATA)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_up_topics_migrate_second_up_and_clean_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    up = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "up"],
        cwd=tmp_cwd(data_dir),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state_file = data_dir / "state.json"
    try:
        deadline = time.monotonic() + 120
        lines = []
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert state_file.exists(), "".join(lines)
        state = json.loads(state_file.read_text())
        assert state["kafka_bootstrap_servers"].startswith("127.0.0.1:")
        assert state["database_url"].startswith("postgresql://")

        listed = _cli(data_dir, "topics", "list")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        for spec in ALL_TOPICS:
            assert spec.name in listed.stdout

        described = _cli(data_dir, "topics", "describe")
        assert described.returncode == 0, described.stderr
        assert "2592000000" in described.stdout  # 30 days on market.bars.1m

        first = _cli(data_dir, "migrate")
        second = _cli(data_dir, "migrate")
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        assert "nothing to do" in second.stdout

        again = _cli(data_dir, "up", timeout=60)
        assert again.returncode != 0
        assert "already running" in again.stdout + again.stderr

        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
        assert up.returncode == 0, out
        assert "stopped" in out
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    for pid in (state["broker_pid"], state["postgres_pid"]):
        assert not _alive(pid), f"pid {pid} still running after Ctrl-C"
    assert _processes_under(data_dir) == []
    assert not state_file.exists()


def test_commands_say_what_to_do_without_services(tmp_path: Path) -> None:
    res = _cli(tmp_path / "nothing-here", "topics", "list")
    assert res.returncode == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in res.stderr and "ops-pipeline up" in res.stderr
