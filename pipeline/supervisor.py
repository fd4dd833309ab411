"""Runs several stages as child processes and restarts any that dies, with capped backoff.

A stage that exits 2 (configuration error) is not restarted: retrying cannot fix it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import structlog

from opsinfra.settings import Settings

log = structlog.get_logger(__name__)
CONFIG_ERROR = 2


def supervise(names: list[str], settings: Settings, *, max_backoff: float = 60.0) -> int:
    """Start `ops-pipeline run --only NAME` per stage; returns when SIGINT/SIGTERM arrives."""
    stopping = False

    def handler(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    env = dict(os.environ, PIPELINE_DATA_DIR=str(settings.pipeline_data_dir))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    backoff = dict.fromkeys(names, 1.0)
    next_start = dict.fromkeys(names, 0.0)
    failed: set[str] = set()
    try:
        while not stopping:
            now = time.monotonic()
            for name in names:
                proc = procs.get(name)
                if proc is not None and proc.poll() is None:
                    continue
                if proc is not None:
                    code = proc.returncode
                    del procs[name]
                    if code == CONFIG_ERROR:
                        log.error("stage has a configuration error; not restarting", stage=name)
                        failed.add(name)
                        continue
                    log.warning("stage exited; restarting", stage=name, code=code, backoff_s=backoff[name])
                    next_start[name] = now + backoff[name]
                    backoff[name] = min(backoff[name] * 2, max_backoff)
                if name in failed or now < next_start[name]:
                    continue
                child_env = dict(env)
                if settings.metrics_port is not None:
                    child_env["METRICS_PORT"] = str(settings.metrics_port + names.index(name))
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.cli", "run", "--only", name], env=child_env
                )
                log.info("stage started", stage=name, pid=procs[name].pid)
            if failed and not procs:
                return CONFIG_ERROR
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0
