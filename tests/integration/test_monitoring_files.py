"""The shipped monitoring: Prometheus alerting rules and the Grafana dashboard.

`promtool` (Debian's `prometheus` package) checks the rules and runs unit tests of them:
each alert fires when it should, after its `for:`, and stays quiet for a standby's stale
gauges. Every metric a rule or a dashboard panel queries must be one the daemon's
`Metrics` really renders, with the labels it really carries, so a renamed metric cannot
leave a silent alert or an empty panel behind.

No YAML library is needed: the rules file is parsed by promtool; this module only reads
the `- alert:` blocks and their one-line `expr:` out of it (and counts them against
promtool's own count), and writes promtool's unit tests as JSON, which is YAML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog.core.breaker import BreakerSnapshot, BreakerState
from watchdog.core.model import AuditAction, AuditRow, Outcome
from watchdog.daemon.metrics import Metrics
from watchdog.engine.report import CycleReport

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "watchdog.json"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# Series Prometheus makes itself for every scrape target, not in /metrics.
SCRAPE_SERIES = {"up"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# The datasource of every panel and query: the dashboard's `datasource` variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana's variables stand for when promtool parses a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*"}

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)")
_ALERT = re.compile(r"^ {6}- alert: (\w+)\n", re.MULTILINE)


def _fail_without(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(
            f"{tool} not found; install {package} (apt-get install {package}), "
            "or run scripts/system-deps as root",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    return _fail_without("promtool", "prometheus")


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60)


# ------------------------------------------------------------------ what /metrics holds


@dataclass(frozen=True)
class Exposed:
    """The sample names of a rendered `Metrics`, their label names and label values."""

    labels: Mapping[str, frozenset[str]]  # sample name -> label names
    values: Mapping[tuple[str, str], frozenset[str]]  # (sample name, label) -> values
    families: Mapping[str, str]  # sample name -> family name


@pytest.fixture(scope="module")
def exposed() -> Exposed:
    """A `Metrics` fed as the daemon feeds it (a leader after one cycle with a detection),
    so every labelled family has samples; read back through the Prometheus text parser."""
    metrics = Metrics()
    metrics.set_leader(True)
    metrics.set_rss(50_000_000)
    metrics.set_brake(False)
    metrics.set_breakers([BreakerSnapshot("api", BreakerState.OPEN)])
    metrics.observe_cycle(CycleReport(now=T0, unhealthy=1), 0.02, 3, {"exhausted": 1})
    metrics.observe_audit(
        AuditRow(1, T0, "i-1", AuditAction.DETECTED, Outcome.OK, detail={"overdue": 1.5})
    )
    labels: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            families[sample.name] = family.name
            for label, value in sample.labels.items():
                values.setdefault((sample.name, label), set()).add(value)
    return Exposed(
        {name: frozenset(names) for name, names in labels.items()},
        {key: frozenset(found) for key, found in values.items()},
        families,
    )


# ------------------------------------------------------------------ reading PromQL


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not its functions, keywords, label
    names or values, durations, numbers or Grafana variables."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)  # by (...), on (...), group_left (...)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def label_problems(expr: str, exposed: Exposed) -> list[str]:
    """Labels the expression matches on or groups by that its metrics do not carry, and
    label values (`label="value"`) the daemon never renders for that label."""
    problems = []
    used = metric_names(expr)
    carried = set(TARGET_LABELS)
    for name in used:
        carried |= exposed.labels.get(name, frozenset())
    for name, matchers in _SELECTOR.findall(expr):
        known = exposed.labels.get(name, frozenset())
        for label, op, value in _MATCHER.findall(matchers):
            if label not in known | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
            elif op == "=" and label in known and value not in exposed.values[(name, label)]:
                problems.append(f"{name}{{{label}={value!r}}} is never rendered")
    for group in _GROUPING.findall(_STRING.sub('""', expr)):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in carried:
                problems.append(f"no metric of the expression has the label {label!r}")
    return problems


def unknown_names(expr: str, exposed: Exposed) -> set[str]:
    return metric_names(expr) - set(exposed.labels) - SCRAPE_SERIES


def test_the_name_reader_sees_only_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job", health="x y"}'
        "[$__rate_interval]))) / on (job, instance) group_left b offset 5m and c:rec "
        '> 1e3 unless absent(d{state="open"}) or time() - e'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c:rec", "d", "e"}
    assert metric_names("sum(rate(x_total[5m])) by (action)") == {"x_total"}


def test_the_label_reader_finds_a_wrong_label(exposed: Exposed) -> None:
    assert label_problems('watchdog_instances{health="unjudgeable"} > 0', exposed) == []
    assert label_problems('watchdog_instances{state="open"}', exposed) == [
        "watchdog_instances has no label 'state'"
    ]
    assert label_problems('watchdog_instances{health="broken"}', exposed) == [
        "watchdog_instances{health='broken'} is never rendered"
    ]
    assert label_problems("sum by (backend) (watchdog_leader)", exposed) == [
        "no metric of the expression has the label 'backend'"
    ]
    assert unknown_names("watchdog_leaders", exposed) == {"watchdog_leaders"}


# ------------------------------------------------------------------ the alerting rules


@dataclass(frozen=True)
class Alert:
    name: str
    block: str  # its lines in alerts.yml

    def field(self, key: str) -> str:
        match = re.search(rf"^ +{key}: (.*)$", self.block, re.MULTILINE)
        assert match, f"alert {self.name} has no {key}:"
        return match.group(1).strip()

    @property
    def expr(self) -> str:
        expr = self.field("expr")
        assert expr[:1] not in ("|", ">", ""), f"{self.name}: keep expr: on one line"
        return expr

    def annotation(self, key: str) -> str:
        """A one-line value, or a folded (`>-`) block's lines joined by spaces."""
        match = re.search(rf"^( +){key}: (.*)\n((?:\1 +.*\n)*)", self.block, re.MULTILINE)
        assert match, f"alert {self.name} has no annotation {key}"
        first, rest = match.group(2).strip(), match.group(3).split()
        return " ".join(rest) if first in (">", ">-", "|", "|-") else first.strip("\"'")


def alerts() -> list[Alert]:
    text = ALERTS.read_text()
    starts = list(_ALERT.finditer(text))
    return [
        Alert(m.group(1), text[m.start() : nxt.start() if nxt else len(text)])
        for m, nxt in zip(starts, [*starts[1:], None], strict=True)
    ]


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout, "every rule is an alert"


def test_a_broken_rule_fails_promtool_check(promtool: str, tmp_path: Path) -> None:
    text = ALERTS.read_text()
    broken = text.replace("expr: absent(watchdog_leader)", "expr: absent(watchdog_leader", 1)
    assert broken != text
    copy = tmp_path / "alerts.yml"
    copy.write_text(broken)

    result = run(promtool, "check", "rules", str(copy))

    assert result.returncode != 0
    assert "unclosed left parenthesis" in result.stdout + result.stderr


def test_the_rule_group_and_its_alerts() -> None:
    assert re.search(r"^  - name: watchdog$", ALERTS.read_text(), re.MULTILINE)
    names = [alert.name for alert in alerts()]
    assert len(names) == len(set(names))
    assert set(names) >= {
        "WatchdogDown",
        "WatchdogNoLeader",
        "WatchdogNoGoodCycle",
        "WatchdogBrakeEngaged",
        "WatchdogBreakerOpen",
        "WatchdogUnjudgeableRows",
        "WatchdogIncidentsExhausted",
    }
    for alert in alerts():
        assert re.fullmatch(r"\d+[smh]", alert.field("for")), alert.name
        assert alert.field("severity") in ("warning", "critical"), alert.name
        assert alert.annotation("summary"), alert.name
        assert "watchdogctl " in alert.annotation("description"), f"{alert.name}: the next step"


@pytest.mark.parametrize("alert", alerts(), ids=lambda alert: alert.name)
def test_every_rule_queries_real_metrics(alert: Alert, exposed: Exposed) -> None:
    assert metric_names(alert.expr), alert.expr
    assert unknown_names(alert.expr, exposed) == set(), f"not in /metrics: {alert.expr}"
    assert label_problems(alert.expr, exposed) == []


# ------------------------------------------------------------------ promtool test rules


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    pairs = ", ".join(f'{k}="{v}"' for k, v in {"job": "watchdog", **labels}.items())
    return {"series": f"{metric}{{{pairs}}}", "values": values}


def at(minutes: int, alertname: str, *fired: Mapping[str, str]) -> dict[str, Any]:
    return {
        "eval_time": f"{minutes}m",
        "alertname": alertname,
        "exp_alerts": [{"exp_labels": dict(labels)} for labels in fired],
    }


A, B = "a:9464", "b:9464"
LEADER_A = [
    series("watchdog_leader", "1x20", instance=A),
    series("watchdog_leader", "0x20", instance=B),
]
CRITICAL = {"job": "watchdog", "severity": "critical"}
WARNING = {"job": "watchdog", "severity": "warning"}

# Each: input series (one sample a minute from 0m) and what each alert does when.
RULE_TESTS: dict[str, tuple[list[dict[str, str]], list[dict[str, Any]]]] = {
    "brake engaged on the leader; a standby's stale brake is ignored": (
        [
            *LEADER_A,
            series("watchdog_brake_engaged", "0 0 1x20", instance=A),
            series("watchdog_brake_engaged", "1x20", instance=B),
        ],
        [
            at(1, "WatchdogBrakeEngaged"),
            at(3, "WatchdogBrakeEngaged"),  # pending: engaged for 1 of its 2 minutes
            at(5, "WatchdogBrakeEngaged", {**CRITICAL, "instance": A}),
        ],
    ),
    "the leader dies and nobody takes over": (
        [
            series("watchdog_leader", "1 1 0x20", instance=A),
            series("watchdog_leader", "0x20", instance=B),
        ],
        [
            at(1, "WatchdogNoLeader"),
            at(3, "WatchdogNoLeader"),
            at(5, "WatchdogNoLeader", CRITICAL),
            at(5, "WatchdogDown"),  # both are still scraped
        ],
    ),
    "a standby takes over": (
        [
            series("watchdog_leader", "1 1 0x20", instance=A),
            series("watchdog_leader", "0 0 0 1x20", instance=B),
        ],
        [at(6, "WatchdogNoLeader")],
    ),
    "every replica stops being scraped": (
        [
            series("watchdog_leader", "1 1 1 stale", instance=A),
            series("watchdog_leader", "0 0 0 stale", instance=B),
            series("up", "1 1 1 0x20", instance=A),
            series("up", "1 1 1 0x20", instance=B),
        ],
        [
            at(2, "WatchdogDown"),
            at(4, "WatchdogDown"),
            at(6, "WatchdogDown", {"severity": "critical"}),
            at(6, "WatchdogNoLeader"),  # no series left to sum: WatchdogDown speaks
            at(7, "WatchdogReplicaDown"),
            at(
                9,
                "WatchdogReplicaDown",
                {**WARNING, "instance": A},
                {**WARNING, "instance": B},
            ),
        ],
    ),
    "cycles stop succeeding": (
        [
            *LEADER_A,
            series("watchdog_last_good_cycle_timestamp_seconds", "0+60x5 300x20", instance=A),
            series("watchdog_last_good_cycle_timestamp_seconds", "0x25", instance=B),
        ],
        [
            at(5, "WatchdogNoGoodCycle"),
            at(11, "WatchdogNoGoodCycle"),  # 360 s old: pending
            at(12, "WatchdogNoGoodCycle", CRITICAL),
        ],
    ),
    "cycles keep succeeding": (
        [
            *LEADER_A,
            series("watchdog_last_good_cycle_timestamp_seconds", "0+60x20", instance=A),
        ],
        [at(15, "WatchdogNoGoodCycle")],
    ),
    "a breaker stays open or half-open; one closes; a standby's is stale": (
        [
            *LEADER_A,
            series("watchdog_breaker_state", "2 2 1 2 2 1 2 2 2 2", instance=A, backend="api"),
            series("watchdog_breaker_state", "2 2 0x8", instance=A, backend="supervisor"),
            series("watchdog_breaker_state", "2x10", instance=B, backend="systemd"),
        ],
        [
            at(4, "WatchdogBreakerOpen"),
            at(7, "WatchdogBreakerOpen", {**WARNING, "instance": A, "backend": "api"}),
        ],
    ),
    "unjudgeable rows stay": (
        [
            *LEADER_A,
            series("watchdog_instances", "0 3x20", instance=A, health="unjudgeable"),
            series("watchdog_instances", "5x20", instance=A, health="healthy"),
        ],
        [
            at(10, "WatchdogUnjudgeableRows"),
            at(
                12,
                "WatchdogUnjudgeableRows",
                {**WARNING, "instance": A, "health": "unjudgeable"},
            ),
        ],
    ),
    "incidents are exhausted": (
        [
            *LEADER_A,
            series("watchdog_incidents_open", "2x10", instance=A, state="exhausted"),
            series("watchdog_incidents_open", "4x10", instance=A, state="open"),
            series("watchdog_incidents_open", "1x10", instance=B, state="exhausted"),
        ],
        [
            at(4, "WatchdogIncidentsExhausted"),
            at(
                6,
                "WatchdogIncidentsExhausted",
                {**WARNING, "instance": A, "state": "exhausted"},
            ),
        ],
    ),
}


def rules_without_annotations() -> str:
    """alerts.yml without its annotations: promtool's unit tests compare them whole, and
    their prose is checked by `promtool check rules` and test_the_rule_group_and_its_alerts."""
    lines = ALERTS.read_text().splitlines(keepends=True)
    kept, skip_deeper_than = [], -1
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than >= 0 and (indent > skip_deeper_than or not line.strip()):
            continue
        skip_deeper_than = indent if line.strip() == "annotations:" else -1
        if skip_deeper_than < 0:
            kept.append(line)
    return "".join(kept)


def write_rule_tests(directory: Path, tests: Mapping[str, Any]) -> Path:
    (directory / "alerts.yml").write_text(rules_without_annotations())
    unit = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {"name": name, "interval": "1m", "input_series": inputs, "alert_rule_test": checks}
            for name, (inputs, checks) in tests.items()
        ],
    }
    path = directory / "alerts_test.yml"
    path.write_text(json.dumps(unit, indent=1))  # JSON is YAML
    return path


def test_the_alerts_fire_when_they_should(promtool: str, tmp_path: Path) -> None:
    unit = write_rule_tests(tmp_path, RULE_TESTS)
    assert "annotations" not in (tmp_path / "alerts.yml").read_text()
    assert run(promtool, "check", "rules", str(tmp_path / "alerts.yml")).returncode == 0

    result = run(promtool, "test", "rules", str(unit), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_the_rule_tests(promtool: str, tmp_path: Path) -> None:
    inputs, _ = RULE_TESTS["brake engaged on the leader; a standby's stale brake is ignored"]
    pending = at(3, "WatchdogBrakeEngaged", {**CRITICAL, "instance": A})  # before its for:
    unit = write_rule_tests(tmp_path, {"wrong": (inputs, [pending])})

    result = run(promtool, "test", "rules", str(unit), cwd=tmp_path)

    assert result.returncode != 0
    assert "WatchdogBrakeEngaged" in result.stdout + result.stderr


def _fired() -> Iterator[tuple[str, Mapping[str, str]]]:
    for _, checks in RULE_TESTS.values():
        for check in checks:
            for expected in check["exp_alerts"]:
                yield check["alertname"], expected["exp_labels"]


def test_every_alert_is_seen_firing_with_the_labels_its_text_uses() -> None:
    fired: dict[str, set[str]] = {}
    for name, labels in _fired():
        fired.setdefault(name, set(labels)).intersection_update(labels)
    for alert in alerts():
        assert alert.name in fired, f"no rule test sees {alert.name} fire"
        text = alert.annotation("summary") + alert.annotation("description")
        used = set(re.findall(r"\$labels\.(\w+)", text))
        assert used <= fired[alert.name], f"{alert.name} names labels it does not carry"


# ------------------------------------------------------------------ the dashboard


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold theirs
    return found


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = [
        (f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
        for p in panels()
        for t in p.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.fullmatch(variable["query"])
            assert match, f"variable {variable['name']}: expected label_values(metric, label)"
            metric, label = match.groups()
            found.append((f"variable {variable['name']}", f"count by ({label}) ({metric})"))
    return found


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_the_dashboard_is_importable_json() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels()]

    assert board["schemaVersion"] >= 36
    assert board["title"]
    assert "id" not in board or board["id"] is None, "an exported id would clash on import"
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['id']} {panel['title']!r} queries nothing"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert all(target["expr"].strip() for target in panel["targets"])


def test_the_dashboard_hard_codes_no_datasource() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for datasource in _datasources(dashboard()):
        if datasource != {"type": "grafana", "uid": "-- Grafana --"}:  # its own annotations
            assert datasource == DATASOURCE


def test_the_dashboard_queries_real_metrics(exposed: Exposed) -> None:
    problems = []
    for where, expr in queries():
        if not metric_names(expr):
            problems.append(f"{where}: selects no metric: {expr}")
        if unknown := unknown_names(expr, exposed):
            problems.append(f"{where}: not in /metrics: {sorted(unknown)}")
        problems.extend(f"{where}: {problem}" for problem in label_problems(expr, exposed))
    assert problems == []


def test_the_dashboard_shows_every_watchdog_metric(exposed: Exposed) -> None:
    used = {exposed.families[name] for _, expr in queries() for name in metric_names(expr)}
    ours = {
        family
        for family in exposed.families.values()
        if family.startswith("watchdog_") and not family.endswith("_created")  # a start time
    }
    assert ours - used == set()
    for histogram in ("watchdog_cycle_duration_seconds", "watchdog_detection_delay_seconds"):
        assert any(
            "histogram_quantile(" in expr and f"{histogram}_bucket" in expr for _, expr in queries()
        ), f"no quantiles of {histogram}"


def test_the_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query, Grafana's variables filled in, as a recording rule."""
    rules = []
    for number, (_, expr) in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = run(promtool, "check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
