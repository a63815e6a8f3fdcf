"""The pod runner's pure parts: a pod spec turned into a local process (paths, Services, env,
volumes, probes) and the pod status it reports."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from llmops_dev.podrunner.kubeletapi import tail
from llmops_dev.podrunner.runner import PodProcess, loopback, pod_status
from llmops_dev.podrunner.translate import Lookups, NotReadyYet, PathMap, translate
from llmops_operator.api.embedding import EmbeddingServiceSpec
from llmops_operator.children import deployment
from llmops_operator.children import embedding as emb_children
from llmops_operator.children.common import Owner

CONFIG = "model:\n  path: /models/run/model\nembedding:\n  url: http://minilm.ml.svc.cluster.local:8080/v1\n"


def lookups(**extra: Any) -> Lookups:
    cms = {"svc-config": {"config.yaml": CONFIG}, "docs": {"a.md": "see /etc/llmops and http://x.y.svc:80"}}
    secrets = {"keys": {"key": base64.b64encode(b"s3cret").decode()}}
    return Lookups(
        config_map=lambda n: cms.get(n),
        secret=lambda n: secrets.get(n),
        claim_dir=lambda n: Path("/data/pv") / n if n == "bound" else None,
        service_address=lambda ns, name: f"127.2.0.9#{ns}/{name}",
        operator_config_maps=frozenset({"svc-config"}),
        **extra,
    )


def pod(**container: Any) -> dict[str, Any]:
    base = {
        "name": "server",
        "command": ["python", "-m", "llmops_workloads.rag", "--config", "/etc/llmops/config.yaml"],
        "env": [
            {"name": "HF_HOME", "value": "/cache/huggingface"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "key"}}},
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/llmops", "readOnly": True},
            {"name": "cache", "mountPath": "/cache"},
            {"name": "docs", "mountPath": "/sources/0"},
            {"name": "model", "mountPath": "/models"},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
        **container,
    }
    return {
        "metadata": {"name": "p-1", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "containers": [base],
            "volumes": [
                {"name": "config", "configMap": {"name": "svc-config"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "docs", "configMap": {"name": "docs"}},
                {"name": "model", "persistentVolumeClaim": {"claimName": "bound"}},
            ],
        },
    }


def test_mount_paths_services_env_and_files_are_mapped_to_this_machine(tmp_path: Path) -> None:
    plan = translate(pod(), pod_ip="127.1.0.3", pod_dir=tmp_path, lookups=lookups(), python="/py", node_env={"X": "1"})
    config_dir = tmp_path / "volumes" / "config"
    assert plan.argv == ["/py", "-m", "llmops_workloads.rag", "--config", f"{config_dir}/config.yaml"]
    assert plan.env["HF_HOME"] == f"{tmp_path}/volumes/cache/huggingface"
    assert (plan.env["POD"], plan.env["IP"], plan.env["KEY"], plan.env["X"]) == ("p-1", "127.1.0.3", "s3cret", "1")
    # The operator's config file is rewritten: the PVC mount and the Service name.
    config = plan.files[config_dir / "config.yaml"].decode()
    assert "path: /data/pv/bound/run/model" in config
    assert "url: http://127.2.0.9#ml/minilm:8080/v1" in config
    # A user's document is copied as it is.
    assert plan.files[tmp_path / "volumes" / "docs" / "a.md"] == b"see /etc/llmops and http://x.y.svc:80"
    assert plan.readiness == ("/ready", 8080) and plan.ports == {"http": 8080}
    assert plan.termination_log == tmp_path / "termination-log"


def test_termination_message_path_is_mapped(tmp_path: Path) -> None:
    p = pod(args=["--termination-log", "/dev/termination-log"], terminationMessagePath="/dev/termination-log")
    plan = translate(p, pod_ip="127.1.0.3", pod_dir=tmp_path, lookups=lookups(), python="/py", node_env={})
    assert plan.argv[-1] == str(tmp_path / "termination-log")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"volumes": [{"name": "config", "configMap": {"name": "absent"}}]}, "configmap 'absent' not found"),
        ({"volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": "pending"}}]}, "'pending' is not bound"),
    ],
)
def test_what_is_missing_is_reported_and_retried(tmp_path: Path, change: dict[str, Any], reason: str) -> None:
    p = pod()
    by_name = {v["name"]: v for v in p["spec"]["volumes"]}
    for v in change["volumes"]:
        by_name[v["name"]] = v
    p["spec"]["volumes"] = list(by_name.values())
    with pytest.raises(NotReadyYet, match=reason):
        translate(p, pod_ip="127.1.0.3", pod_dir=tmp_path, lookups=lookups(), python="/py", node_env={})


def test_path_map_matches_whole_path_segments_only() -> None:
    paths = PathMap({"/tmp": Path("/l/tmp"), "/cache": Path("/l/c"), "/sources/0": Path("/l/s0")})
    assert paths.local("/tmp/x /tmpfoo /cache") == "/l/tmp/x /tmpfoo /l/c"
    assert paths.local('dir: "/sources/0", other: /sources/01') == 'dir: "/l/s0", other: /sources/01'


def test_the_operators_real_deployment_translates(tmp_path: Path) -> None:
    spec = EmbeddingServiceSpec.model_validate({"model": {"name": "sentence-transformers/all-MiniLM-L6-v2"}})
    owner = Owner(api_version="llmops.dev/v1alpha1", kind="EmbeddingService", name="e", namespace="ml", uid="u")
    w = emb_children.workload(owner, spec)
    template = deployment.build(w)["spec"]["template"]
    p = {"metadata": {"name": "e-1", "namespace": "ml", "uid": "u1"}, "spec": template["spec"]}
    cms = {w.config_map_name: {"config.yaml": "x: 1"}}
    lk = Lookups(lambda n: cms.get(n), lambda n: None, lambda n: None, lambda ns, n: "127.2.0.1")
    plan = translate(p, pod_ip="127.1.0.9", pod_dir=tmp_path, lookups=lk, python="/py", node_env={})
    assert plan.argv[:3] == ["/py", "-m", "llmops_workloads.embedding"]
    assert plan.readiness == ("/ready", 8080)


def test_pod_status_follows_the_process(tmp_path: Path) -> None:
    pp = PodProcess("u", "ml", "p", "server", loopback(1, 3), tmp_path, "Never", 30)
    assert pp.ip == "127.1.0.4"
    assert pod_status(pp)["phase"] == "Pending"
    pp.waiting = ("CreateContainerConfigError", "configmap 'x' not found")
    assert pod_status(pp)["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    pp.terminated = {"exitCode": 42, "reason": "Error", "message": '{"error": "bad data"}'}
    status = pod_status(pp)
    assert status["phase"] == "Failed" and status["podIP"] == "127.1.0.4"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 42
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"


def test_tail_keeps_the_last_lines() -> None:
    assert tail(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert tail(b"a\nb\nc", 5) == b"a\nb\nc"
    assert tail(b"a\n", 0) == b""


def test_env_from_and_secret_volumes(tmp_path: Path) -> None:
    p = pod(envFrom=[{"configMapRef": {"name": "svc-config"}, "prefix": "CM_"}, {"secretRef": {"name": "keys"}}])
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "key", "mountPath": "/var/run/secrets/llmops"})
    items = [{"key": "key", "path": "k"}]
    p["spec"]["volumes"].append({"name": "key", "secret": {"secretName": "keys", "items": items}})
    plan = translate(p, pod_ip="127.1.0.3", pod_dir=tmp_path, lookups=lookups(), python="/py", node_env={})
    assert "path: /data/pv/bound/run/model" in plan.env["CM_config.yaml"]  # configuration is mapped
    assert plan.env["key"] == "s3cret"
    assert plan.files[tmp_path / "volumes" / "key" / "k"] == b"s3cret"
