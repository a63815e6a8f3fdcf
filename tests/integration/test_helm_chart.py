"""The Helm chart (charts/llmops-operator) against the real control plane: lint and schema, every
rendered object accepted by the API server, an install, and its RBAC shown to be both enough (the
operator, run with the chart's ServiceAccount token, reconciles all three kinds) and no more (what
the ServiceAccount cannot do, in both RBAC scopes)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import llmops_operator
from llmops_dev.cluster import ClusterState, build
from llmops_dev.operator_process import OperatorProcess
from llmops_dev.services import MilvusLite
from llmops_operator import images

from kube import Kube, condition, crd_manifest, wait_for

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmops-operator"
KUBE_VERSION = build.load_versions()["kubernetes"]["version"]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ALL_OPTIONAL = (
    "--set=metrics.serviceMonitor.enabled=true",
    "--set=metrics.prometheusRule.enabled=true",
    "--set=metrics.grafanaDashboard.enabled=true",
)
# Kinds whose CRDs (the Prometheus Operator's) the local control plane does not have: the API
# server cannot validate them, so the dry run leaves them out; they are checked for shape instead.
ABSENT_CRD_GROUPS = ("monitoring.coreos.com",)
# An RBAC denial or kopf's "Not enough permissions" fallback. (A 403 for content in a namespace
# being terminated, left over by earlier tests, is admission, not RBAC: ignored.)
# The Prometheus Operator's ServiceMonitor, schemaless, for the operator's optional child (as in
# test_embedding_service.py; removed again at the end).
SERVICE_MONITOR_CRD = crd_manifest(
    "monitoring.coreos.com",
    "ServiceMonitor",
    "servicemonitors",
    {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
)
PERMISSION_PROBLEM = re.compile(r"\b403\b|forbidden|not enough permissions", re.IGNORECASE)


# -- helpers --------------------------------------------------------------------------------


def render(kube: Kube, release: str, namespace: str, *args: str) -> list[dict[str, Any]]:
    out = kube.helm("template", release, str(CHART), "-n", namespace, f"--kube-version={KUBE_VERSION}", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def can(k: Kube, *args: str) -> bool:
    """``kubectl auth can-i``: yes (exit 0) or no (exit 1)."""
    out = k.run("auth", "can-i", *args, check=False).strip()
    assert out.split()[0] in ("yes", "no"), out
    return out.split()[0] == "yes"


def sa_kube(kube: Kube, release_ns: str, sa: str, path: Path) -> Kube:
    """kubectl as the chart's ServiceAccount, with a TokenRequest token (no Secret involved)."""
    token = kube.run("create", "token", sa, "-n", release_ns, "--duration=1h").strip()
    return kube.as_token(token, path)


def permission_problems(proc: OperatorProcess) -> list[str]:
    return [
        line
        for line in proc.log_path.read_text().splitlines()
        if PERMISSION_PROBLEM.search(line) and "being terminated" not in line
    ]


def reconciled(proc: OperatorProcess, what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    """Wait for what the operator should bring about; fail at once, with its log lines, when it
    reports a permission problem (the wait would only time out)."""

    def checked() -> Any:
        if problems := permission_problems(proc):
            raise AssertionError(f"{what}: the operator lacks permissions:\n" + "\n".join(problems[:5]))
        return probe()

    return wait_for(what, checked, timeout=timeout)


def ready(kube: Kube, proc: OperatorProcess, kind: str, ns: str, name: str, type_: str = "Ready") -> Any:
    """``type_`` is True for the object's current generation."""

    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.get(kind, name, ns)
        c = condition(obj, type_)
        fits = c and c["status"] == "True" and c.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if fits else None

    return reconciled(proc, f"{kind} {ns}/{name} {type_}=True", probe)


@dataclass
class Release:
    name: str
    namespace: str
    fullname: str  # of the Deployment, the ServiceAccount, the (Cluster)Roles and bindings

    @property
    def service_account(self) -> str:
        return self.fullname


@pytest.fixture(scope="module")
def release_ns(kube: Kube, crds: list[str]) -> Iterator[str]:
    """The chart's own namespace, enforcing the restricted Pod Security Standard: the operator's
    pod is admitted there only if its security context really is restricted."""
    name = f"llmops-helm-{uuid.uuid4().hex[:6]}"
    kube.run("create", "namespace", name)
    kube.run(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        # Enforce applies to pods only; warn also checks the Deployment's pod template (dry runs).
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=latest",
    )
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


def _install(kube: Kube, name: str, namespace: str, *args: str) -> Release:
    kube.helm("install", name, str(CHART), "-n", namespace, *args)
    return Release(name, namespace, name if "llmops-operator" in name else f"{name}-llmops-operator")


@pytest.fixture(scope="module")
def cluster_release(kube: Kube, release_ns: str) -> Iterator[Release]:
    release = _install(kube, "llmops-c", release_ns)
    yield release
    kube.helm("uninstall", release.name, "-n", release_ns, check=False)


@pytest.fixture(scope="module")
def shared_operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """Only the operator under the chart's identity may reconcile while it is tested (as in
    test_namespace_scoping): the session's operator stops, then starts again."""
    operator.stop()
    yield
    operator.start()


# -- lint and render ------------------------------------------------------------------------


def test_lint_passes_and_the_schema_refuses_bad_values(kube: Kube) -> None:
    kube.helm("lint", "--strict", str(CHART))
    kube.helm(
        "lint", "--strict", str(CHART), "--set=rbac.scope=namespaced", "--set=watchNamespaces={a,b}", *ALL_OPTIONAL
    )

    def refused(*args: str) -> str:
        proc = kube.helm("lint", str(CHART), *args, check=False)
        assert proc.returncode != 0, proc.stdout
        return proc.stdout + proc.stderr

    assert "value must be one of 'cluster', 'namespaced'" in refused("--set=rbac.scope=everything")
    assert "/watchNamespaces" in refused("--set=rbac.scope=namespaced")  # namespaced: which namespaces?
    assert "additional properties 'replicas' not allowed" in refused("--set=replicas=2")  # a typo or a wish
    assert "/metrics/port" in refused("--set=metrics.port=http")
    assert "/image/pullPolicy" in refused("--set=image.pullPolicy=Sometimes")


def test_every_rendered_object_is_accepted_by_the_api_server(kube: Kube, release_ns: str, namespace: str) -> None:
    modes = {
        "cluster": (),
        "namespaced": ("--set=rbac.scope=namespaced", f"--set=watchNamespaces={{{namespace}}}"),
        "everything on": (
            "--set=rbac.scope=namespaced",
            f"--set=watchNamespaces={{{namespace}}}",
            *ALL_OPTIONAL,
            "--include-crds",
        ),
    }
    for mode, args in modes.items():
        docs = render(kube, "dry", release_ns, *args)
        kinds = {d["kind"] for d in docs}
        assert {"ServiceAccount", "Deployment", "Service", "ClusterRole", "ClusterRoleBinding"} <= kinds, mode
        if mode != "cluster":
            assert {"Role", "RoleBinding"} <= kinds
            roles = [d for d in docs if d["kind"] == "Role"]
            assert [r["metadata"]["namespace"] for r in roles] == [namespace]
        checked = [d for d in docs if d["apiVersion"].split("/")[0] not in ABSENT_CRD_GROUPS]
        doc = {"apiVersion": "v1", "kind": "List", "items": checked}
        proc = subprocess.run(
            [kube.kubectl_path, f"--kubeconfig={kube.kubeconfig}", "apply", "--dry-run=server", "--server-side",
             "--field-manager=helm-test", "-f", "-"],
            input=json.dumps(doc), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert out.count("(server dry run)") == len(checked), out
        # The release namespace warns at "restricted": a pod template violating it is a warning.
        assert "PodSecurity" not in out, out

    docs = render(kube, "dry", release_ns, *ALL_OPTIONAL)
    by_kind = {d["kind"]: d for d in docs}
    monitor = by_kind["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == "metrics"
    assert monitor["selector"]["matchLabels"].items() <= by_kind["Service"]["metadata"]["labels"].items()
    alerts = {r["alert"]: r for r in by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"LLMOpsOperatorReconcileErrors", "LLMOpsOperatorDown"}
    assert "> 0.01" in alerts["LLMOpsOperatorReconcileErrors"]["expr"]
    assert alerts["LLMOpsOperatorReconcileErrors"]["for"] == "5m"
    assert 'job="dry-llmops-operator-metrics"' in alerts["LLMOpsOperatorDown"]["expr"]
    dashboard = json.loads(by_kind["ConfigMap"]["data"]["llmops-operator.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("reconciles_total", "reconcile_errors_total", "reconcile_duration_seconds_bucket", "objects"):
        assert f"llmops_operator_{metric}" in exprs
    assert by_kind["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"


# -- install --------------------------------------------------------------------------------


def test_install_creates_a_restricted_operator_deployment(kube: Kube, cluster_release: Release) -> None:
    ns, name = cluster_release.namespace, cluster_release.fullname
    dep = kube.get("deployment", name, ns)
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/llmops-dev/llmops-operator:0.1.0"  # images.py's name, the appVersion
    assert c["command"] == ["python", "-m", "llmops_operator"]
    assert not any(a.startswith("--namespace") for a in c["args"])  # cluster scope: every namespace
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health", "scheme": "HTTP"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8000, "health": 8080}
    assert {e["name"]: e.get("value") for e in c["env"]}["LLMOPS_IMAGE_REGISTRY"] == "ghcr.io/llmops-dev"
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    sc, psc = c["securityContext"], pod["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert pod["serviceAccountName"] == cluster_release.service_account
    # Admitted by the namespace's restricted Pod Security level (kwok "runs" it; nothing executes).
    selector = f"app.kubernetes.io/instance={cluster_release.name}"
    wait_for("the operator's pod admitted", lambda: kube.run("get", "pods", "-n", ns, "-l", selector, "-o", "name"))
    events = kube.run("get", "events", "-n", ns, "--field-selector", "reason=FailedCreate")
    assert "PodSecurity" not in events, events
    assert kube.exists("service", f"{name}-metrics", ns)
    assert kube.exists("clusterrolebinding", name)


# -- RBAC: enough ---------------------------------------------------------------------------


class Volumes:
    """hostPath PersistentVolumes pre-bound to a claim (the local cluster has no provisioner)."""

    def __init__(self, kube: Kube, root: Path) -> None:
        self.kube, self.root, self.names = kube, root, list[str]()

    def pv(self, namespace: str, claim: str) -> None:
        name = f"{namespace}-{claim}"
        (self.root / name).mkdir(parents=True)
        self.kube.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(self.root / name)},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        self.names.append(name)


def _resources(milvus_uri: str) -> list[dict[str, Any]]:
    api = "llmops.dev/v1alpha1"
    pairs = "".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(8))
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pairs"}, "data": {"train.jsonl": pairs}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "docs"},
            "data": {"kettle.md": "# Kettle\n\nDescale it monthly."},
        },
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "milvus"}, "stringData": {"token": "root:Milvus"}},
        {
            "apiVersion": api,
            "kind": "EmbeddingService",
            "metadata": {"name": "minilm"},
            # A ServiceMonitor once its CRD appears: the operator notices CRDs (kopf watches them).
            "spec": {"model": {"name": MODEL, "dimension": 384}, "monitoring": {"serviceMonitor": {}}},
        },
        {
            "apiVersion": api,
            "kind": "RAGPipeline",
            "metadata": {"name": "docs"},
            "spec": {
                "embedding": {"serviceRef": {"name": "minilm"}},
                # The token Secret: the one Secret the operator reads. Delete: a finalizer to manage.
                "vectorStore": {
                    "milvus": {
                        "uri": milvus_uri,
                        "secretRef": {"name": "milvus", "key": "token"},
                        "deletionPolicy": "Delete",
                    }
                },
                "sources": [{"configMap": {"name": "docs"}}],  # an ingestion Job, its pod's termination message
            },
        },
        {
            "apiVersion": api,
            "kind": "FineTuneJob",
            "metadata": {"name": "tune"},
            "spec": {
                "task": "embedding",
                "baseModel": {"name": MODEL},
                "dataset": {"configMap": {"name": "pairs", "key": "train.jsonl"}},
                "output": {"pvc": {"claimName": "out", "create": True, "size": "1Gi", "retain": False}},
            },
        },
        # Serves the fine-tune once it succeeded: the operator GETs the FineTuneJob.
        {
            "apiVersion": api,
            "kind": "EmbeddingService",
            "metadata": {"name": "tuned"},
            "spec": {
                "model": {"name": "minilm-tuned", "dimension": 384, "source": {"fineTuneJobRef": {"name": "tune"}}}
            },
        },
    ]


def test_the_chart_rbac_is_enough_to_reconcile_every_kind(
    kube: Kube,
    cluster: ClusterState,
    cluster_release: Release,
    shared_operator_paused: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    as_sa = sa_kube(kube, cluster_release.namespace, cluster_release.service_account, tmp_path / "sa.kubeconfig")
    assert "system:serviceaccount:" in as_sa.run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    milvus = MilvusLite(tmp_path / "milvus").start()
    volumes = Volumes(kube, tmp_path / "pv")
    proc = OperatorProcess(
        cluster, tmp_path / "operator", resync_seconds=5, extra_args=("--kubeconfig", as_sa.kubeconfig)
    )
    try:
        proc.start()  # healthy = every child kind listed cluster-wide with the token
        volumes.pv(namespace, "out")
        for obj in _resources(milvus.uri):
            kube.apply(obj, namespace)

        assert ready(kube, proc, "emb", namespace, "minilm")["status"]["endpoint"]
        kube.apply(SERVICE_MONITOR_CRD)
        reconciled(proc, "ServiceMonitor created", lambda: kube.exists("servicemonitor", "minilm", namespace), 30)
        ready(kube, proc, "rag", namespace, "docs", "IngestionSucceeded")  # its Job, its pod's message
        rag = ready(kube, proc, "rag", namespace, "docs")
        assert condition(rag, "CollectionReady")["status"] == "True"  # type: ignore[index]
        assert rag["metadata"]["finalizers"] == ["llmops.dev/drop-collection"]
        ftj = ready(kube, proc, "ftj", namespace, "tune", "Succeeded")
        assert ftj["status"]["phase"] == "Succeeded" and ftj["status"]["output"] == "pvc://out/tune/model"
        assert kube.get("pvc", "out", namespace)["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
        ready(kube, proc, "emb", namespace, "tuned")
        events = kube.run("get", "events", "-n", namespace, "--field-selector", "source=llmops-operator")
        assert "Succeeded" in events, events

        # Deletion: the operator drops the collection and removes its finalizer.
        kube.run("delete", "rag", "docs", "-n", namespace, "--wait=false")
        reconciled(proc, "RAGPipeline deleted", lambda: not kube.exists("rag", "docs", namespace), timeout=60)
        from pymilvus import MilvusClient

        assert not MilvusClient(uri=milvus.uri, timeout=10).has_collection(rag["status"]["collection"])
        assert permission_problems(proc) == []
    finally:
        proc.stop()
        milvus.stop()
        kube.run("delete", "crd", SERVICE_MONITOR_CRD["metadata"]["name"], "--ignore-not-found", "--wait=true")
        if volumes.names:
            kube.run("delete", "pv", *volumes.names, "--wait=false", check=False)


# -- RBAC: no more --------------------------------------------------------------------------


def test_the_service_account_has_no_more_than_it_needs(
    kube: Kube, cluster_release: Release, namespace: str, tmp_path: Path
) -> None:
    sa = sa_kube(kube, cluster_release.namespace, cluster_release.service_account, tmp_path / "sa.kubeconfig")
    ns = ("-n", namespace)
    # What it needs.
    assert can(sa, "get", "secrets", *ns)
    assert can(sa, "list", "embeddingservices.llmops.dev", "--all-namespaces")
    assert can(sa, "patch", "ragpipelines.llmops.dev", "--subresource=status", *ns)
    assert can(sa, "create", "deployments.apps", *ns) and can(sa, "patch", "jobs.batch", *ns)
    assert can(sa, "list", "customresourcedefinitions.apiextensions.k8s.io")
    # Secrets: the one named in a RAGPipeline, never a listing.
    assert not can(sa, "list", "secrets", "--all-namespaces")
    assert not can(sa, "list", "secrets", *ns)
    assert not can(sa, "watch", "secrets", *ns)
    assert not can(sa, "create", "secrets", *ns)
    # CRDs: read to notice API changes, never changed.
    assert not can(sa, "delete", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can(sa, "patch", "customresourcedefinitions.apiextensions.k8s.io")
    # Pods: listed for termination messages only; no pods of its own, no exec, no logs.
    assert not can(sa, "create", "pods", *ns)
    assert not can(sa, "delete", "pods", *ns)
    assert not can(sa, "create", "pods", "--subresource=exec", *ns)
    assert not can(sa, "get", "pods", "--subresource=log", *ns)
    # The users' specs are theirs; no RBAC of its own; nothing cluster-wide beyond reads.
    assert not can(sa, "patch", "embeddingservices.llmops.dev", *ns)
    assert not can(sa, "delete", "finetunejobs.llmops.dev", *ns)
    assert not can(sa, "create", "rolebindings.rbac.authorization.k8s.io", *ns)
    assert not can(sa, "list", "nodes")
    assert not can(sa, "list", "namespaces")  # cluster scope: kopf needs no namespace list
    assert not can(sa, "delete", "events", *ns)


def test_namespaced_scope_grants_only_the_watched_namespaces(
    kube: Kube,
    cluster: ClusterState,
    release_ns: str,
    shared_operator_paused: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    other = f"{namespace}-other"
    kube.run("create", "namespace", other)
    release = _install(
        kube, "llmops-n", release_ns, "--set=rbac.scope=namespaced", f"--set=watchNamespaces={{{namespace}}}"
    )
    proc = None
    try:
        args = kube.get("deployment", release.fullname, release_ns)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={namespace}" in args
        sa = sa_kube(kube, release_ns, release.service_account, tmp_path / "sa.kubeconfig")
        assert can(sa, "list", "embeddingservices.llmops.dev", "-n", namespace)
        assert can(sa, "get", "secrets", "-n", namespace)
        for verb, resource in (
            ("get", "configmaps"),
            ("get", "secrets"),
            ("list", "embeddingservices.llmops.dev"),
            ("create", "deployments.apps"),
            ("list", "pods"),
            ("create", "events"),
        ):
            assert not can(sa, verb, resource, "-n", other), (verb, resource)
            assert not can(sa, verb, resource, "-n", release_ns), (verb, resource)
        assert not can(sa, "list", "embeddingservices.llmops.dev", "--all-namespaces")
        # Cluster-wide it only reads CRDs and namespaces (kopf's observers).
        assert can(sa, "list", "customresourcedefinitions.apiextensions.k8s.io")
        assert can(sa, "watch", "namespaces")
        assert not can(sa, "get", "namespaces")
        assert not can(sa, "delete", "customresourcedefinitions.apiextensions.k8s.io")

        # And it is enough for the operator watching that namespace.
        proc = OperatorProcess(
            cluster, tmp_path / "operator", extra_args=("--kubeconfig", sa.kubeconfig, "--namespace", namespace)
        )
        proc.start()
        spec = {"model": {"name": MODEL, "dimension": 384}}
        emb = {"apiVersion": "llmops.dev/v1alpha1", "kind": "EmbeddingService", "metadata": {"name": "scoped"}}
        kube.apply({**emb, "spec": spec}, namespace)
        ready(kube, proc, "emb", namespace, "scoped")
        assert permission_problems(proc) == []
    finally:
        if proc is not None:
            proc.stop()
        kube.helm("uninstall", release.name, "-n", release_ns, check=False)
        kube.run("delete", "namespace", other, "--wait=false", check=False)
    # Uninstalled: the roles are gone, the CRDs (and so the users' resources) kept.
    assert not kube.exists("role", release.fullname, namespace)
    assert not kube.exists("clusterrole", f"{release.fullname}-cluster")
    assert kube.exists("crd", "embeddingservices.llmops.dev")


def test_chart_versions_follow_the_operator() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["version"] == "0.1.0"
    assert chart["appVersion"] == llmops_operator.__version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == f"{images.DEFAULT_REGISTRY}/{images.OPERATOR}"
    assert values["workloadImages"]["registry"] == images.DEFAULT_REGISTRY
