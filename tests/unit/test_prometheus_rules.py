"""The alert and recording rules of ``ops/prometheus/`` (issue 31): valid for ``promtool``,
unit-tested by ``promtool test rules`` (every alert firing and not firing), and each alert
carrying a severity, a summary and a runbook section that exists."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "ops" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "ops" / "prometheus" / "rules_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian: apt-get install prometheus; .ci/run installs it)")


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the markdown headings: lower case, punctuation dropped, spaces to -."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return out


@needs_promtool
def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    done = subprocess.run([PROMTOOL, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    cases = [case for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    names = {rule["alert"] for rule in alerts()}
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert names - firing == set(), f"never seen firing: {sorted(names - firing)}"
    assert names - quiet == set(), f"never seen quiet: {sorted(names - quiet)}"
    assert (firing | quiet) - names == set(), f"tested, but not in rules.yml: {sorted((firing | quiet) - names)}"


def test_every_alert_has_a_severity_a_summary_and_its_runbook_section():
    sections = anchors(RUNBOOK.read_text())
    seen = alerts()
    assert len(seen) >= 20, [a["alert"] for a in seen]
    for rule in seen:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/runbook.md#"), (name, url)
        assert url.split("#", 1)[1] in sections, f"{name}: no section {url} in docs/runbook.md"


def test_the_runbook_section_of_each_alert_says_what_to_do():
    text = RUNBOOK.read_text()
    for rule in alerts():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        heading = re.search(rf"^## ({anchor})\s*$", text, re.I | re.M)
        assert heading, anchor
        body = text[heading.end():].split("\n## ", 1)[0]
        for part in ("What it means", "What the customer sees", "First checks", "Recovery"):
            assert part in body, f"{anchor}: no '{part}'"
