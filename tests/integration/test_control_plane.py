"""Smoke tests of the local control plane itself: every behaviour the operator will rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmops_dev.cluster import ClusterState, build

from kube import Kube, condition, crd_manifest, wait_for

pytestmark = pytest.mark.cluster

WIDGET_CRD = crd_manifest(
    "smoke.llmops.dev",
    "Widget",
    "widgets",
    {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["minReplicas", "maxReplicas"],
                "properties": {
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 1},
                },
                "x-kubernetes-validations": [
                    {
                        "rule": "self.minReplicas <= self.maxReplicas",
                        "message": "minReplicas must not exceed maxReplicas",
                    }
                ],
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    },
)


def _widget(name: str, lo: int, hi: int) -> dict[str, Any]:
    return {
        "apiVersion": "smoke.llmops.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"minReplicas": lo, "maxReplicas": hi},
    }


def _pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get("pods", namespace=namespace)["items"]
    wanted = dict(kv.split("=") for kv in selector.split(","))
    return [p for p in items if all(p["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]


def test_server_version_is_the_pinned_release(kube: Kube) -> None:
    pinned = build.load_versions()["kubernetes"]["version"]
    version = json.loads(kube.run("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == pinned
    assert version["clientVersion"]["gitVersion"] == pinned


def test_bootstrap_objects_exist(kube: Kube) -> None:
    namespaces = {n["metadata"]["name"] for n in kube.get("namespaces")["items"]}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= namespaces
    assert kube.exists("serviceaccount", "default", "default")
    assert kube.exists("configmap", "kube-root-ca.crt", "default")
    assert kube.exists("clusterrole", "cluster-admin")
    assert kube.exists("priorityclass", "system-cluster-critical")


def test_fake_nodes_cpu_and_gpu(kube: Kube) -> None:
    nodes = {n["metadata"]["name"]: n for n in kube.get("nodes")["items"]}
    gpu = nodes["llmops-gpu-0"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    cpu = nodes["llmops-cpu-0"]
    assert "nvidia.com/gpu" not in cpu["status"]["allocatable"]
    for node in (gpu, cpu):
        assert condition(node, "Ready") is not None
        assert condition(node, "Ready")["status"] == "True"  # type: ignore[index]


def test_crd_schema_and_cel_validation(kube: Kube, namespace: str) -> None:
    kube.apply(WIDGET_CRD)
    wait_for(
        "Widget CRD Established",
        lambda: (c := condition(kube.get("crd", "widgets.smoke.llmops.dev"), "Established")) and c["status"] == "True",
    )
    ok, out = kube.try_apply(_widget("good", 1, 3), namespace)
    assert ok, out
    assert kube.get("widget", "good", namespace)["spec"] == {"minReplicas": 1, "maxReplicas": 3}

    ok, out = kube.try_apply(_widget("inverted", 5, 2), namespace)
    assert not ok
    assert "minReplicas must not exceed maxReplicas" in out
    ok, out = kube.try_apply(_widget("negative", -1, 2), namespace)
    assert not ok
    assert "should be greater than or equal to 0" in out
    assert not kube.exists("widget", "inverted", namespace)


def test_deployment_pods_become_ready_on_the_cpu_node(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
            },
        },
        namespace,
    )
    wait_for(
        "3 ready replicas",
        lambda: kube.get("deployment", "web", namespace).get("status", {}).get("readyReplicas") == 3,
    )
    pods = _pods(kube, namespace, "app=web")
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert condition(pod, "Ready")["status"] == "True"  # type: ignore[index]
        # Untolerated pods never land on the tainted GPU node.
        assert pod["spec"]["nodeName"] == "llmops-cpu-0"


def _pod(name: str, gpus: int, tolerate: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": "registry.invalid/cuda:1",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {},
            }
        ]
    }
    if tolerate:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_gpu_pod_lands_only_on_the_gpu_node(kube: Kube, namespace: str) -> None:
    kube.apply(_pod("trainer", gpus=2, tolerate=True), namespace)
    pod = wait_for(
        "GPU pod Running",
        lambda: (p := kube.get("pod", "trainer", namespace))["status"].get("phase") == "Running" and p,
    )
    assert pod["spec"]["nodeName"] == "llmops-gpu-0"

    # Without the toleration, a GPU request has nowhere to go.
    kube.apply(_pod("untolerated", gpus=1, tolerate=False), namespace)
    scheduled = wait_for(
        "PodScheduled=False",
        lambda: (c := condition(kube.get("pod", "untolerated", namespace), "PodScheduled")) and c,
    )
    assert scheduled["status"] == "False"
    assert scheduled["reason"] == "Unschedulable"

    # More GPUs than any node has: unschedulable too.
    kube.apply(_pod("too-big", gpus=9, tolerate=True), namespace)
    too_big = wait_for(
        "too-big PodScheduled=False",
        lambda: (c := condition(kube.get("pod", "too-big", namespace), "PodScheduled")) and c,
    )
    assert too_big["status"] == "False"
    assert "nvidia.com/gpu" in too_big["message"]


def test_job_completes(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "completions": 2,
                "parallelism": 2,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "registry.invalid/job:1"}],
                    }
                },
            },
        },
        namespace,
    )
    job = wait_for(
        "Job Complete",
        lambda: (
            (j := kube.get("job", "once", namespace))
            and (c := condition(j, "Complete"))
            and c["status"] == "True"
            and j
        ),
    )
    assert job["status"]["succeeded"] == 2


def test_deleting_an_owner_garbage_collects_its_children(kube: Kube, namespace: str) -> None:
    kube.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {"a": "1"}},
        namespace,
    )
    uid = kube.get("configmap", "owner", namespace)["metadata"]["uid"]
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "controller": True}
                ],
            },
            "data": {"b": "2"},
        },
        namespace,
    )
    assert kube.exists("configmap", "child", namespace)
    kube.run("delete", "configmap", "owner", "-n", namespace)
    wait_for("child garbage-collected", lambda: not kube.exists("configmap", "child", namespace), timeout=60)


def test_rbac_is_enforced_for_service_accounts(kube: Kube, namespace: str, tmp_path: Path) -> None:
    sa = f"system:serviceaccount:{namespace}:default"
    can_i = kube.run("auth", "can-i", "list", "secrets", "-n", namespace, f"--as={sa}", check=False)
    assert can_i.strip() == "no"
    # A real token for the service account, minted by the TokenRequest API ...
    token = kube.run("create", "token", "default", "-n", namespace).strip()
    as_sa = kube.as_token(token, tmp_path / "sa.kubeconfig")
    whoami = json.loads(as_sa.run("auth", "whoami", "-o", "json"))
    assert whoami["status"]["userInfo"]["username"] == sa
    # ... is refused what RBAC does not grant ...
    denied = as_sa.run("get", "secrets", "-n", namespace, check=False)
    assert "forbidden" in denied.lower()
    # ... and allowed what a RoleBinding grants.
    kube.run("create", "role", "cm-reader", "--verb=list", "--resource=configmaps", "-n", namespace)
    kube.run(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:default",
        "-n",
        namespace,
    )
    wait_for(
        "the RoleBinding to take effect",
        lambda: (
            "configmap/kube-root-ca.crt" in as_sa.run("get", "configmaps", "-n", namespace, "-o", "name", check=False)
        ),
    )


def test_helm_works_with_the_generated_kubeconfig(kube: Kube, namespace: str, tmp_path: Path) -> None:
    pinned = build.load_versions()["helm"]["version"]
    assert kube.helm("version", "--short").stdout.startswith(pinned)
    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hi\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        "  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    kube.helm("install", "hello", str(chart), "-n", namespace, "--set", "greeting=hello", "--wait")
    cm = kube.get("configmap", "hello-greeting", namespace)
    assert cm["data"]["greeting"] == "hello"
    # Helm asked the real server for its version.
    assert cm["data"]["kube"] == build.load_versions()["kubernetes"]["version"]
    releases = json.loads(kube.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("hello", "deployed")]


def test_state_records_every_process(cluster: ClusterState) -> None:
    assert set(cluster.pids) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    assert Path(cluster.kubeconfig).stat().st_mode & 0o077 == 0, "kubeconfig holds a client key: owner-only"
