"""Stages as child processes (`python -m pipeline.cli run --only NAME`), for `run` and the demo:
`supervise` restarts any that dies, with capped backoff, except one that exits 2 (a
configuration error, which retrying cannot fix).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

from opsinfra.backoff import Backoff
from opsinfra.settings import Settings

log = structlog.get_logger(__name__)
CONFIG_ERROR = 2


class StageProcesses:
    """One child process per stage, all with the same environment (plus, with `metrics_port`, a
    port of its own: the base + its place in the start order), logging to `log_dir/NAME.log`
    (fresh at the first start, appended to by restarts) or else to this process's output;
    stopped with SIGTERM, killed when they outlast the grace."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: Path | None = None,
        cwd: Path | None = None,
        own_session: bool = False,  # a process group of its own: no terminal's Ctrl-C, killpg works
        metrics_port: int | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd
        self.own_session = own_session
        self.metrics_port = metrics_port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._slots: dict[str, int] = {}  # name -> place in the first start order, kept by restarts

    def start(self, names: Iterable[str]) -> None:
        for name in names:
            restart = name in self._slots
            slot = self._slots.setdefault(name, len(self._slots))
            env = dict(self.env)
            if self.metrics_port is not None:
                env["METRICS_PORT"] = str(self.metrics_port + slot)
            command = [sys.executable, "-m", "pipeline.cli", "run", "--only", name]
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{name}.log", "ab" if restart else "wb")  # noqa: SIM115
            try:
                self.procs[name] = subprocess.Popen(
                    command, env=env, cwd=self.cwd, start_new_session=self.own_session,
                    stdout=out, stderr=None if out is None else subprocess.STDOUT,
                )  # fmt: skip
            finally:
                if out is not None:
                    out.close()  # the child holds its own copy

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def dead(self) -> list[str]:
        """The stages whose process has exited."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def reap(self, name: str) -> int | None:
        """The exit code of the stage's process once it has exited, which is then forgotten;
        None while it runs, or when it was never started (or already reaped)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is None:
            return None
        del self.procs[name]
        return proc.returncode

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM to every running stage; any still running `grace_s` later is killed."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def supervise(names: list[str], settings: Settings, *, max_backoff: float = 60.0) -> int:
    """Start `ops-pipeline run --only NAME` per stage; returns when SIGINT/SIGTERM arrives."""
    stopping = False

    def handler(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    stages = StageProcesses(
        dict(os.environ, PIPELINE_DATA_DIR=str(settings.pipeline_data_dir)),
        metrics_port=settings.metrics_port,
    )
    # the n-th restart of a stage waits up to min(max_backoff, 2**(n-1)) s: 1, 2, 4, ...
    backoff = {name: Backoff(floor=0.5, cap=max_backoff) for name in names}
    next_start = dict.fromkeys(names, 0.0)
    failed: set[str] = set()
    try:
        while not stopping:
            now = time.monotonic()
            for name in names:
                if name in failed or stages.running(name):
                    continue
                code = stages.reap(name)
                if code == CONFIG_ERROR:
                    log.error("stage has a configuration error; not restarting", stage=name)
                    failed.add(name)
                    continue
                if code is not None:
                    delay = backoff[name].next()
                    log.warning("stage exited; restarting", stage=name, code=code, backoff_s=round(delay, 2))
                    next_start[name] = now + delay
                if now < next_start[name]:
                    continue
                stages.start([name])
                log.info("stage started", stage=name, pid=stages.procs[name].pid)
            if failed and not stages.procs:
                return CONFIG_ERROR
            time.sleep(0.2)
    finally:
        stages.stop(grace_s=30.0)
    return 0
