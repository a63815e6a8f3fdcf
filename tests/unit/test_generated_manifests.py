"""The security invariants of every pod the operator creates, checked on what its builders generate
for every example in ``examples/`` and for ``security_scan.FEATURES`` (every option that changes a
pod, with a Secret wherever one can be referenced). No checkov here: these are the properties the
checkov scan (tests/integration/test_security_posture.py) relies on, including the ones behind the
checks .checkov.yaml skips everywhere (automountServiceAccountToken, Secrets in env, NetworkPolicy)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from llmops_dev import security_scan
from llmops_operator.children.common import SECRETS_DIR

GROUPS: dict[str, list[dict[str, Any]]] = {
    **{f"examples/{name}": objects for name, objects in security_scan.example_children().items()},
    "features": security_scan.feature_children(),
}
# The one Secret passed as an environment variable (see CKV_K8S_35 in .checkov.yaml).
SECRET_ENV = {"HF_TOKEN"}
# Config keys that name a credential: their value must be a file under SECRETS_DIR, never the secret.
CREDENTIAL_KEY = re.compile(r"(?i)(password|secret|api_?key|token)(file)?$")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj["kind"]
    spec: dict[str, Any] | None = None
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        spec = obj["spec"]["template"]["spec"]
    elif kind == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def template_labels(obj: dict[str, Any]) -> dict[str, str]:
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else obj["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


PODS = [
    pytest.param(obj, id=f"{group}/{obj['kind']}/{obj['metadata']['name']}")
    for group, objects in GROUPS.items()
    for obj in objects
    if pod_spec(obj) is not None
]
CONFIG_MAPS = [
    pytest.param(obj, id=f"{group}/{obj['metadata']['name']}")
    for group, objects in GROUPS.items()
    for obj in objects
    if obj["kind"] == "ConfigMap"
]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_example_and_feature_generates_pods() -> None:
    kinds = {obj["kind"] for objects in GROUPS.values() for obj in objects}
    assert {"Deployment", "Job", "CronJob", "ConfigMap", "NetworkPolicy"} <= kinds
    assert len(GROUPS) == len(list(security_scan.EXAMPLES.glob("*.yaml"))) + 1
    assert all(GROUPS.values()), [g for g, objects in GROUPS.items() if not objects]
    assert len(PODS) >= 15


@pytest.mark.parametrize("obj", PODS)
def test_pod_runs_restricted(obj: dict[str, Any]) -> None:
    pod = pod_spec(obj)
    assert pod is not None
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] >= 10000  # numeric, not root, not a system user
    assert isinstance(psc.get("runAsGroup"), int) and psc["runAsGroup"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(pod):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]  # and nothing added back
        assert sc.get("privileged", False) is False, c["name"]
        assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", psc["runAsUser"]) != 0
        assert sc.get("seccompProfile", psc["seccompProfile"]) == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("obj", PODS)
def test_pod_gets_no_api_token_and_nothing_of_the_host(obj: dict[str, Any]) -> None:
    pod = pod_spec(obj)
    assert pod is not None
    # No workload calls the Kubernetes API (the operator reads what it needs from pod status).
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert pod.get("enableServiceLinks") is False  # no other Services' addresses in the env
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key, False), key
    for v in pod.get("volumes", []):
        assert set(v) & {"hostPath", "nfs", "iscsi", "flexVolume"} == set(), v
    for c in containers(pod):
        for port in c.get("ports", []):
            assert "hostPort" not in port and "hostIP" not in port, port


@pytest.mark.parametrize("obj", PODS)
def test_pod_requests_what_it_uses(obj: dict[str, Any]) -> None:
    pod = pod_spec(obj)
    assert pod is not None
    for c in containers(pod):
        res = c["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"], c["name"]
        assert res["limits"]["memory"] == res["requests"]["memory"], c["name"]  # no memory overcommit
        if "nvidia.com/gpu" in res["requests"]:
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
        # Tagged by version from images.py (or spec.image): never a moving tag.
        image = c["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


@pytest.mark.parametrize("obj", PODS)
def test_pod_takes_secrets_only_by_reference(obj: dict[str, Any]) -> None:
    pod = pod_spec(obj)
    assert pod is not None
    for c in containers(pod):
        for e in c.get("env", []):
            if "value" in e:
                assert not CREDENTIAL_KEY.search(e["name"]), f"a literal credential in env {e['name']}"
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert e["name"] in SECRET_ENV, f"Secret {ref} as env {e['name']}: mount it as a file"
                assert "value" not in e
        assert "envFrom" not in c  # a whole Secret or ConfigMap as env: never
        secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for m in c.get("volumeMounts", []):
            if m["name"] in secret_volumes:
                assert m["readOnly"] is True and m["mountPath"].startswith(SECRETS_DIR), m
    for v in pod.get("volumes", []):
        if "secret" in v:
            secret = v["secret"]
            assert secret["defaultMode"] & 0o007 == 0, v  # not world-readable
            assert secret.get("items"), v  # only the key the config names, not the whole Secret


@pytest.mark.parametrize("obj", CONFIG_MAPS)
def test_config_files_name_secret_files_never_secrets(obj: dict[str, Any]) -> None:
    """A config key for a credential holds the path of a mounted Secret file."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if CREDENTIAL_KEY.search(str(key)) and not isinstance(value, dict | list):
                    assert str(key).endswith("File"), f"{path}.{key} holds a credential, not a file"
                    assert str(value).startswith(SECRETS_DIR + "/"), f"{path}.{key}: {value}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    for key, text in obj.get("data", {}).items():
        if key.endswith(".yaml"):
            walk(yaml.safe_load(text), key)


def test_every_credential_file_a_config_names_is_mounted() -> None:
    for group, objects in GROUPS.items():
        configs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        for obj in objects:
            pod = pod_spec(obj)
            if pod is None:
                continue
            config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
            config = yaml.safe_load(configs[config_volume["configMap"]["name"]]["data"]["config.yaml"])
            wanted = set(re.findall(re.escape(SECRETS_DIR) + r"/[\w./-]+", yaml.safe_dump(config)))
            mounted = {m["mountPath"] for c in containers(pod) for m in c.get("volumeMounts", [])}
            missing = {w for w in wanted if not any(w == m or w.startswith(m + "/") for m in mounted)}
            assert not missing, f"{group} {obj['kind']}/{obj['metadata']['name']}: {missing}"


def test_the_operator_creates_no_secrets_and_no_rbac() -> None:
    kinds = {obj["kind"] for objects in GROUPS.values() for obj in objects}
    assert not kinds & {"Secret", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def test_every_serving_pod_has_probes_and_a_network_policy() -> None:
    """Behind the CKV2_K8S_6 skip: the pods without a NetworkPolicy are Jobs, never servers."""
    for group, objects in GROUPS.items():
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        for dep in (o for o in objects if o["kind"] == "Deployment"):
            labels = template_labels(dep)
            covering = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
            assert covering, f"{group}: Deployment {dep['metadata']['name']} has no NetworkPolicy"
            assert all("Ingress" in p["spec"]["policyTypes"] for p in covering)
            (c,) = dep["spec"]["template"]["spec"]["containers"]
            assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c), dep["metadata"]["name"]
