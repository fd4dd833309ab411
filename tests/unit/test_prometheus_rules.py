"""deploy/prometheus: `promtool check rules`, the rules' unit tests (`promtool test rules`) and
`promtool check config`; then what promtool cannot see: every stage watched, only metrics the
stages export, and Alertmanager reading every secret from a file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsinfra.metrics import Metrics
from opsinfra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run installs it)",
)
SECRETS_DIR = "/etc/alertmanager/secrets/"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=300,
                          check=False)


def _yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _yaml("rules.yml")["groups"] for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    done = _promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_stage_is_scraped_and_has_a_missing_rule() -> None:
    from pipeline.stages import STAGES

    (job,) = [j for j in _yaml("prometheus.yml")["scrape_configs"] if j["job_name"] == "ops-pipeline"]
    scraped = {c["labels"]["stage"]: c["targets"] for c in job["static_configs"]}
    assert set(scraped) == set(STAGES)
    missing = {r["labels"]["stage"]: r["expr"] for r in _alerts() if r["alert"] == "OpsStageMissing"}
    assert set(missing) == set(STAGES)
    for stage, expr in missing.items():
        assert f'stage="{stage}"' in expr and "absent(" in expr


def test_every_alert_has_a_severity_a_rule_and_annotations_naming_its_subject() -> None:
    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= {
        "OpsStageMissing", "OpsConsumerLagHigh", "OpsStageStalled", "OpsNoBars", "OpsDeadLettersRising",
        "OpsDispatchErrors", "OpsAlpacaStreamErrors", "OpsStageRestarting",
    }
    for a in alerts:
        labels, notes = a["labels"], a["annotations"]
        assert labels["severity"] in ("critical", "warning", "info"), a["alert"]
        assert re.fullmatch(r"[a-z_]+", labels["rule"]), a["alert"]
        assert notes["summary"].strip() and notes["description"].strip(), a["alert"]
        fixed = re.search(r'stage="(\w+)"', a["expr"])
        subject = labels.get("stage") or (fixed.group(1) if fixed else "$labels.stage")
        assert subject in notes["summary"].lower() or "$labels.stage" in notes["summary"], a["alert"]


def _exported_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_rules_read_only_metrics_the_stages_export() -> None:
    exported = _exported_names()
    for a in _alerts():
        for name in re.findall(r"\b(ops_[a-z_]+)\b", a["expr"]):
            assert name in exported, f"{a['alert']}: {name}"


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in [(f"{path}.{k}", v), *_walk(v, f"{path}.{k}")]]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _walk(v, f"{path}[{i}]")]
    return []


def test_alertmanager_has_the_notifiers_receivers_with_secrets_in_files_only() -> None:
    am = _yaml("alertmanager.yml")
    names = {r["name"]: r for r in am["receivers"]}
    assert am["route"]["receiver"] in names
    (ops,) = [r for r in names.values() if "webhook_configs" in r]
    assert ops["webhook_configs"][0]["url_file"].startswith(SECRETS_DIR)
    assert ops["slack_configs"][0]["api_url_file"].startswith(SECRETS_DIR)
    assert ops["telegram_configs"][0]["bot_token_file"].startswith(SECRETS_DIR)
    assert ops["telegram_configs"][0]["chat_id_file"].startswith(SECRETS_DIR)
    assert ops["discord_configs"][0]["webhook_url_file"].startswith(SECRETS_DIR)
    assert ops["email_configs"][0]["to"]
    assert am["global"]["smtp_auth_password_file"].startswith(SECRETS_DIR)
    inline = {"url", "api_url", "bot_token", "webhook_url", "auth_password", "smtp_auth_password",
              "slack_api_url", "chat_id"}
    for path, value in _walk(am):
        key = path.rsplit(".", 1)[-1]
        assert key not in inline, path
        if key.endswith("_file"):
            assert str(value).startswith(SECRETS_DIR), path
    configs = [c for r in am["receivers"] for kind, cs in r.items() if kind.endswith("_configs") for c in cs]
    assert len(configs) == 5 and all(c.get("send_resolved") is True for c in configs)


def test_alertmanager_repeats_and_inhibits_like_the_notifier() -> None:
    am = _yaml("alertmanager.yml")
    seconds = {"h": 3600, "m": 60, "s": 1}
    interval = am["route"]["repeat_interval"]
    default = Settings.model_fields["alert_repeat_interval_s"].default
    assert int(interval[:-1]) * seconds[interval[-1]] == default
    alerts = {a["alert"] for a in _alerts()}
    for rule in am["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            found = re.fullmatch(r'alertname!?="(\w+)"', matcher)
            assert found is None or found.group(1) in alerts, matcher
