"""The workload alerts and dashboard in charts/monitoring (docs/monitoring.md), checked by the real
``promtool`` (built from the Go module proxy by ``llmops-dev cluster build``, pinned in
devtools/llmops_dev/versions.toml) and against the metrics the code exports."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_dev.cluster import build

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "charts" / "monitoring"
RULES = MONITORING / "prometheus-rules.yaml"
RULES_TESTS = MONITORING / "prometheus-rules.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard-workloads.json"
OPERATOR_RULES = ROOT / "charts" / "llmops-operator" / "templates" / "prometheusrule.yaml"
DOCS = ROOT / "docs" / "monitoring.md"
CODE = (ROOT / "operator" / "llmops_operator", ROOT / "workloads" / "llmops_workloads")

# Series that other exporters provide, each listed in docs/monitoring.md ("External metrics").
EXTERNAL = {
    "up",  # Prometheus, for every target
    "DCGM_FI_DEV_FB_USED",  # NVIDIA DCGM exporter
    "DCGM_FI_DEV_FB_FREE",
    "kube_deployment_spec_replicas",  # kube-state-metrics
    "kube_deployment_status_replicas_available",
    "kube_deployment_labels",
    "kube_job_failed",
    "kube_job_status_failed",
    "kube_job_labels",
}
# What the brief of each alert is; a rename must be deliberate (Alertmanager routes by name).
ALERTS = {
    "LLMOpsWorkloadHighErrorRate",
    "LLMOpsWorkloadHighLatency",
    "LLMOpsWorkloadSlowFirstToken",
    "LLMOpsGPUMemoryHigh",
    "LLMOpsWorkloadTargetDown",
    "LLMOpsDeploymentUnavailable",
    "LLMOpsDeploymentNoReplicas",
    "LLMOpsEmbeddingQueueSaturated",
    "LLMOpsFineTuneJobFailed",
    "LLMOpsFineTuneJobPodFailures",
    "LLMOpsRAGDependencyErrors",
}
# The dashboard's "kind" variable recognises each kind of server by a metric only it exports.
KIND_MARKERS = {
    "embedding": ("llmops_batch_size_count", "llmops_workloads/embedding/"),
    "rag": ("llmops_rag_stage_seconds_count", "llmops_workloads/rag/"),
    "generation": ("llmops_generation_running", "llmops_workloads/generation/"),
    "fine-tuning": ("llmops_train_step", "llmops_workloads/training/"),
}


# -- what the code exports -------------------------------------------------------------------------

_CLIENT_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
_FAMILIES = {
    "CounterMetricFamily": "Counter",
    "GaugeMetricFamily": "Gauge",
    "HistogramMetricFamily": "Histogram",
    "SummaryMetricFamily": "Summary",
    "InfoMetricFamily": "Info",
}


def _series_names(kind: str, name: str) -> set[str]:
    """The series names prometheus_client exposes for one metric."""
    if kind == "Counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Info":
        return {f"{name}_info"}
    return {name}


@cache
def exported_metrics() -> dict[str, str]:
    """{series name: the file that defines it}, for the operator and every workload, read from the
    source (no server has to be imported: the RAG and generation servers pull in torch)."""
    out: dict[str, str] = {}
    for package in CODE:
        for path in sorted(package.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                kind = called if called in _CLIENT_TYPES else _FAMILIES.get(called)
                first = node.args[0]
                if kind and isinstance(first, ast.Constant) and isinstance(first.value, str):
                    for series in _series_names(kind, first.value):
                        out[series] = str(path.relative_to(ROOT))
    return out


# -- PromQL metric names (enough of PromQL for the expressions in this repository) -----------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    names = set()
    for alternatives in re.findall(r'__name__\s*=~?\s*"([^"]*)"', expr):
        names |= {n for n in alternatives.split("|") if n}
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", s):
        if m[2] is None and m[1] not in _KEYWORDS:
            names.add(m[1])
    return names


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{route!~"/x|y"}[5m]))) > 2\n'
        "unless on (namespace, service) group by (namespace, service) (b)\n"
        'or label_replace(sum(rate(c_total[5m])) > 0.05, "dependency", "redis", "", "")'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c_total"}
    assert metric_names('{__name__=~"x_count|y"}') == {"x_count", "y"}
    assert metric_names("d / on (pod) group_left (node) e > 1/60") == {"d", "e"}


# -- promtool --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def promtool() -> Path:
    """The cached build (`llmops-dev cluster build` makes it; building here when it is missing)."""
    (component,) = [c for c in build.components(build.load_versions()) if c.name == "promtool"]
    if not build.is_built(component) and shutil.which("go") is None:
        pytest.fail("promtool is not built and Go is missing: run `llmops-dev cluster build` with Go on PATH")
    path = build.build(component) / "promtool"
    assert path.exists(), path
    return path


def _run(promtool: Path, *args: str, cwd: Path) -> str:
    proc = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _groups(annotations: bool = True) -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    groups: list[dict[str, Any]] = doc["spec"]["groups"]
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    return groups


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"]]


def test_promtool_version_is_the_pinned_one(promtool: Path) -> None:
    version = build.load_versions()["promtool"]["version"]
    out = subprocess.run([str(promtool), "--version"], capture_output=True, text=True, check=True).stdout
    assert f"version {build.prometheus_release(version)} " in out, out


def test_promtool_checks_the_rules(promtool: Path, tmp_path: Path) -> None:
    """Syntax, types and annotation templates of every rule, as Prometheus will load them."""
    rules = tmp_path / "llmops-workloads.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _groups()}, sort_keys=False))
    out = _run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules), cwd=tmp_path)
    assert f"SUCCESS: {len(_rules())} rules found" in out, out


def test_promtool_unit_tests_fire_and_stay_quiet(promtool: Path, tmp_path: Path) -> None:
    """charts/monitoring/prometheus-rules.test.yaml: series that fire each alert and series that
    must not (promtool compares the full list of firing alerts at each evaluation time). The rules
    are written without annotations: promtool would compare their rendered text verbatim."""
    (tmp_path / "llmops-workloads.rules.yaml").write_text(
        yaml.safe_dump({"groups": _groups(annotations=False)}, sort_keys=False)
    )
    shutil.copy(RULES_TESTS, tmp_path / RULES_TESTS.name)
    out = _run(promtool, "test", "rules", RULES_TESTS.name, cwd=tmp_path)
    assert "SUCCESS" in out, out


def test_every_alert_has_a_case_that_fires_it() -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in _rules()}


# -- the PrometheusRule itself (no promtool needed) ------------------------------------------------


def test_prometheus_rule_resource() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"] == "llmops-workloads"
    assert "namespace" not in doc["metadata"], "applied with -n to wherever Prometheus reads rules"
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names))
    assert set(names) == ALERTS


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: str(r["alert"]))
def test_each_alert_is_documented_and_actionable(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook"} <= set(annotations)
    assert "docs/monitoring.md#alerts" in annotations["runbook"]
    assert f"`{rule['alert']}`" in DOCS.read_text(), "docs/monitoring.md explains every alert"
    if "for" in rule:
        assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_operator_alerts_are_not_repeated() -> None:
    """The operator's own alerts live in its chart; these rules are about the workloads."""
    operator_alerts = set(re.findall(r"- alert: (\w+)", OPERATOR_RULES.read_text()))
    assert operator_alerts and not operator_alerts & {rule["alert"] for rule in _rules()}
    for rule in _rules():
        assert "llmops_operator_" not in rule["expr"]


def test_rule_metrics_exist() -> None:
    known = set(exported_metrics()) | EXTERNAL
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: {unknown} is exported by no llmops module nor a documented exporter"


def test_fine_tune_alerts_use_the_labels_the_operator_sets() -> None:
    """kube_job_labels carries the Job's labels as label_<name> (after the allow-list); the ones
    the alerts select on must be the ones children/finetune.py puts on the Job."""
    from llmops_operator.api.finetune import FineTuneJobSpec
    from llmops_operator.children import finetune
    from llmops_operator.children.common import Owner

    owner = Owner("llmops.dev/v1alpha1", "FineTuneJob", "ft", "uid-1", "ml")
    spec = FineTuneJobSpec.model_validate(
        {
            "task": "embedding",
            "baseModel": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
            "dataset": {"pvc": {"claimName": "corpus", "path": "pairs.jsonl"}},
            "output": {"pvc": {"claimName": "models"}},
        }
    )
    job = finetune.job(finetune.workload(owner, spec), spec)
    job_labels = job["metadata"]["labels"]
    for rule in _rules():
        if not rule["alert"].startswith("LLMOpsFineTuneJob"):
            continue
        selected = re.findall(r'label_(\w+)="([^"]*)"', rule["expr"])
        assert selected, rule["alert"]
        for name, value in selected:
            (key,) = [k for k in job_labels if re.sub(r"[^A-Za-z0-9_]", "_", k) == name]
            assert job_labels[key] == value, f"{rule['alert']}: {key}={value}, the Job has {job_labels[key]}"


def test_deployment_alerts_use_the_labels_the_operator_sets() -> None:
    from llmops_operator.children.common import MANAGED_BY

    for rule in _rules():
        if "kube_deployment_labels" in rule["expr"]:
            assert f'label_app_kubernetes_io_managed_by="{MANAGED_BY}"' in rule["expr"], rule["alert"]


# -- the dashboard ---------------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _dashboard()["templating"]["list"]}


def _kind_regex() -> str:
    return "|".join(o["value"] for o in _variables()["kind"]["options"])


def _targets() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in _dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def _variable_selectors() -> list[str]:
    """The series selectors inside the query variables' label_values(selector, label)."""
    out = []
    for var in _variables().values():
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert m, var["query"]
            assert var["definition"] == var["query"]["query"]
            out.append(m[1])
    return out


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they expand to."""
    expr = expr.replace("${kind:regex}", _kind_regex()).replace("$__rate_interval", "5m")
    return re.sub(r"\$(namespace|service)\b", ".*", expr)


def test_dashboard_structure() -> None:
    dash = _dashboard()
    assert dash["uid"] == "llmops-workloads"
    operator = json.loads((ROOT / "charts/llmops-operator/dashboards/llmops-operator.json").read_text())
    assert dash["uid"] != operator["uid"] and dash["title"] != operator["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {"datasource", "kind", "namespace", "service"} <= set(_variables())
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and panel["description"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24


def test_dashboard_covers_what_operators_look_at() -> None:
    used = set().union(*(metric_names(expr) for _, expr in _targets()))
    for metric in (
        "llmops_requests_total",  # request rate
        "llmops_request_duration_seconds_bucket",  # latency percentiles
        "llmops_batch_size_bucket",  # batch size
        "llmops_queue_depth",  # queue depth
        "llmops_rag_cache_lookups_total",  # cache hit ratio
        "llmops_generation_generated_tokens_total",  # tokens/s
        "llmops_train_loss",  # training loss
        "llmops_train_step",  # training progress
        "llmops_train_total_steps",
    ):
        assert metric in used, metric


def test_dashboard_queries_are_filtered_by_the_variables() -> None:
    for title, expr in _targets():
        assert 'namespace=~"$namespace"' in expr, title
        if "llmops_train_" not in expr:  # trainer pods are no Service's endpoints
            for selector in re.findall(r"llmops_\w+\{[^}]*\}", expr):
                assert 'service=~"$service"' in selector, f"{title}: {selector}"


def test_dashboard_metrics_exist() -> None:
    known = set(exported_metrics()) | EXTERNAL
    for title, expr in _targets():
        unknown = metric_names(expr) - known
        assert not unknown, f"{title}: {unknown}"
    for selector in _variable_selectors():
        unknown = metric_names(_as_promql(selector)) - known
        assert not unknown, f"{selector}: {unknown}"


def test_dashboard_kinds_are_told_apart_by_their_own_metrics() -> None:
    options = {o["text"]: o["value"] for o in _variables()["kind"]["options"]}
    assert options == {kind: metric for kind, (metric, _) in KIND_MARKERS.items()}
    query = ", ".join(f"{k} : {v}" for k, v in options.items())
    assert _variables()["kind"]["query"] == query
    defined = exported_metrics()
    for kind, (metric, package) in KIND_MARKERS.items():
        assert package in defined[metric], f"{kind}: {metric} is defined in {defined[metric]}"


def test_external_metrics_are_documented() -> None:
    docs = DOCS.read_text()
    for name in EXTERNAL:
        assert f"`{name}`" in docs, name


def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    """Each query, with Grafana's variables expanded, loaded as a recording rule."""
    queries = [_as_promql(expr) for _, expr in _targets()] + [_as_promql(s) for s in _variable_selectors()]
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(queries)]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = _run(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out, out
