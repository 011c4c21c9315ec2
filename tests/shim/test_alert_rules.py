"""docs/alerts.yml: valid YAML in Prometheus' rule-file shape, and every expression names
only metrics that GET /metrics or the worker's port exports (promtool is not available)."""

from __future__ import annotations

import re

import yaml
from prometheus_client import REGISTRY

import pyshim.metrics  # noqa: F401 - registers the shim's metrics
import pyshim.worker_metrics  # noqa: F401 - registers the worker's
from tests.pg import ROOT

NAME = re.compile(r"\b(booking_[a-z0-9_]+)\b")


def exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [])
        names.update(family.name + s for s in suffixes)
        names.update(s.name for s in family.samples)
    return names


def test_every_rule_is_well_formed_and_names_exported_metrics():
    doc = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert rules and all(set(rule) <= {"alert", "expr", "for", "labels", "annotations"} for rule in rules)
    names = exported()
    for rule in rules:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"]), rule
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
        used = NAME.findall(rule["expr"])
        assert used, rule["alert"]
        unknown = [n for n in used if n not in names]
        assert not unknown, f"{rule['alert']} names metrics nobody exports: {unknown}"
        assert rule["expr"].count("(") == rule["expr"].count(")") and rule["expr"].count("{") == rule["expr"].count("}")
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_the_critical_cases_have_a_critical_rule():
    doc = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    critical = " ".join(r["expr"] for g in doc["groups"] for r in g["rules"] if r["labels"]["severity"] == "critical")
    for metric in ("booking_stripe_events_dead", "booking_jobs_dead", "booking_cron_seconds_since_last_run",
                   "booking_open_critical_errors", "booking_oldest_unswept_hold_seconds"):
        assert metric in critical, metric
