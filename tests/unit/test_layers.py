"""The house's import contracts ([tool.importlinter] in pyproject.toml): layers point down, and
trading/ stays free of I/O clients. A second run over a small broken tree shows they can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(
    not LINT.exists(), reason="import-linter is not installed (pip install -e '.[test]')"
)


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT), str(config), "--no-cache", "--no-logo"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_every_import_points_down_and_trading_is_pure() -> None:
    done = _lint(ROOT, ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("KEPT") == 2, done.stdout


def _package(root: Path, name: str, **modules: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / name / f"{module}.py").write_text(source)


def test_the_contracts_fail_on_an_upward_or_impure_import(tmp_path: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for name in config["root_packages"]:
        _package(tmp_path, name)
    (tmp_path / "trading" / "orders.py").write_text("import httpx\n")  # I/O in the pure layer
    (tmp_path / "opsinfra" / "settings.py").write_text("from pipeline import cli\n")  # base -> shell
    (tmp_path / "pipeline" / "cli.py").write_text("")
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in config.items() if k != "contracts"]
    for contract in config["contracts"]:  # JSON scalars and arrays are TOML values too
        lines += ["[[tool.importlinter.contracts]]"] + [f"{k} = {json.dumps(v)}" for k, v in contract.items()]
    conf = tmp_path / "contracts.toml"
    conf.write_text("\n".join(lines) + "\n")
    done = _lint(tmp_path, conf)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("BROKEN") == 2, done.stdout
    assert "opsinfra.settings -> pipeline.cli" in done.stdout
    assert "trading.orders -> httpx" in done.stdout
