"""The shipped alert rules and Alertmanager config, checked by Prometheus' own tools:
``promtool check rules``, ``promtool test rules`` (a firing and a quiet case per alert), and
``amtool check-config`` with the email route each severity takes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support.stack import ROOT

# promtool and amtool come with the local stack (`make up`).
pytestmark = pytest.mark.stack

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts_test.yml"
ALERTMANAGER = MONITORING / "alertmanager.yml"


def tool(name: str) -> str:
    """A Prometheus tool's path; missing is a failure (`make up` installs them), not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found; run `make up` to install it", pytrace=False)
    return path


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=MONITORING)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), flags=re.M)


def test_rules_are_valid() -> None:
    output = run(tool("promtool"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_names())} rules found" in output, output
    for name in ("AesopWorkerDown", "AesopRelayLag", "AesopConsumerLag", "AesopConsumerStalled",
                 "HostDiskSpaceLow", "HostMemoryLow"):  # fmt: skip
        assert name in alert_names()


def test_rule_unit_tests_pass() -> None:
    output = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output, output


def test_each_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = re.findall(r"alertname: (\w+)\n\s*exp_alerts:(.*)", RULE_TESTS.read_text())
    firing = {name for name, rest in cases if rest.strip() != "[]"}
    quiet = {name for name, rest in cases if rest.strip() == "[]"}
    for name in alert_names():
        assert name in firing, f"no test where {name} fires"
        assert name in quiet, f"no test where {name} stays quiet"


def test_alertmanager_config_mails_every_severity() -> None:
    amtool = tool("amtool")
    output = run(amtool, "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in output, output
    routes = {
        "critical": "email-oncall",
        "warning": "email-dba",
    }
    for severity, receiver in routes.items():
        got = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                  f"severity={severity}", "alertname=AesopRelayLag")  # fmt: skip
        assert got.splitlines()[0] == receiver, got
    text = ALERTMANAGER.read_text()
    for receiver in routes.values():
        block = text.split(f"- name: {receiver}\n", 1)[1].split("- name:", 1)[0]
        assert "email_configs:" in block and "to:" in block, f"{receiver} sends no email"
