"""The security posture, end to end.

1. checkov over the rendered Helm chart and over every child the operator builds for the examples
   and ``security_scan.FEATURES`` finds no failed check (skips: .checkov.yaml, with reasons). The
   first run installs checkov into its own virtualenv (a minute or so).
2. A secret canary: one random value planted in every Secret the resources reference (an
   EmbeddingService's API key and hub token, a RAGPipeline's Milvus token, the one Secret the
   operator itself reads, and its embedding and server keys, a FineTuneJob's hub token), driven
   through reconciles by the session's operator until Ready / Succeeded, plus a RAGPipeline whose
   Milvus is down (errors are where secrets leak), and a real embedding server with the value as
   its API key and HF_TOKEN, called with right and wrong keys and through a key rotation. Then the
   value, plain or base64, is nowhere: operator logs, server logs, Events, the objects (status
   included) and children in the namespace, the operator's and the server's metrics.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmops_dev import security_scan
from llmops_dev.operator_process import OperatorProcess
from llmops_dev.services import MilvusLite, ServerProcess
from servers import minilm_path

from kube import Kube, condition, wait_for

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
API = "llmops.dev/v1alpha1"


# -- checkov --------------------------------------------------------------------------------


def test_checkov_finds_no_failed_check() -> None:
    started = time.monotonic()
    result = security_scan.scan()
    print(f"\n{result.summary()} ({time.monotonic() - started:.0f}s)")
    by_check: dict[str, int] = {}
    for f in result.passed:
        by_check[f.check_id] = by_check.get(f.check_id, 0) + 1
    print(f"{len(by_check)} distinct checks passed; skipped by .checkov.yaml: {', '.join(result.skipped_by_config)}")
    assert result.parsing_errors == [], result.parsing_errors
    assert result.failed == [], "checkov failed checks (fix them, or skip with a reason in .checkov.yaml):\n" + (
        "\n".join(str(f) for f in result.failed)
    )
    # It really scanned: the chart in both modes, every example, the features, many checks each.
    scanned = {f.file.split("/")[0] for f in result.passed}
    expected = {"chart-cluster", "chart-namespaced", "features"}
    expected |= {f"example-{p.stem}" for p in security_scan.EXAMPLES.glob("*.yaml")}
    assert scanned == expected, scanned ^ expected
    assert result.resources >= 100 and len(result.passed) >= 1000
    # The pod-level checks behind the unit tests ran and passed (not skipped by accident).
    for check in ("CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_40"):
        assert by_check.get(check, 0) >= 20, check
    assert set(result.skipped_by_config) == set(security_scan.config_skips())


@pytest.mark.cluster
def test_the_scanned_features_are_resources_the_api_server_accepts(kube: Kube, crds: list[str], namespace: str) -> None:
    """FEATURES stands for what users can write: every rule of the CRDs (CEL included) accepts it."""
    doc = {"apiVersion": "v1", "kind": "List", "items": security_scan.FEATURES}
    out = kube.run("apply", "--dry-run=server", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(doc))
    assert out.count("(server dry run)") == len(security_scan.FEATURES), out


# -- the secret canary ----------------------------------------------------------------------


def encodings(value: str) -> list[str]:
    """The value and every form base64 gives it: alone, or inside a longer string at any offset
    (the 4-character groups that depend on the value's bytes only)."""
    raw = value.encode()
    found = [value]
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw).decode()
        start, end = -(-pad // 3) * 4, (pad + len(raw)) // 3 * 4
        found.append(enc[start:end])
    return found


def leaks(text: str, value: str) -> list[str]:
    """Every place (with context) where ``value`` or a base64 form of it occurs in ``text``."""
    out = []
    for needle in encodings(value):
        at = text.find(needle)
        while at >= 0:
            out.append(text[max(0, at - 120) : at + len(needle) + 40])
            at = text.find(needle, at + 1)
    return out


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (loopback)
        return str(r.read().decode())


class Volumes:
    """hostPath PersistentVolumes pre-bound to a claim (the local cluster has no provisioner)."""

    def __init__(self, kube: Kube, root: Path) -> None:
        self.kube, self.root, self.names = kube, root, list[str]()

    def pv(self, namespace: str, claim: str) -> None:
        name = f"{namespace}-{claim}-{uuid.uuid4().hex[:4]}"
        (self.root / name).mkdir(parents=True)
        self.kube.apply({
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
        })  # fmt: skip
        self.names.append(name)


@pytest.fixture
def volumes(kube: Kube, tmp_path: Path) -> Iterator[Volumes]:
    v = Volumes(kube, tmp_path / "pv")
    yield v
    if v.names:
        kube.run("delete", "pv", *v.names, "--wait=false", check=False)


def ref(key: str) -> dict[str, str]:
    return {"name": "canary", "key": key}


def resources(milvus_uri: str, dead_uri: str) -> list[dict[str, Any]]:
    pairs = "".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(8))
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pairs"}, "data": {"train.jsonl": pairs}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "docs"}, "data": {"a.md": "# A\n\nText."}},
        {
            "apiVersion": API,
            "kind": "EmbeddingService",
            "metadata": {"name": "minilm"},
            "spec": {
                "model": {
                    "name": MODEL,
                    "dimension": 384,
                    "source": {"huggingface": {"tokenSecretRef": ref("hf-token")}},
                },
                "auth": {"apiKeySecretRef": ref("api-key")},
                "rateLimits": {
                    "requestsPerMinute": 600,
                    "redis": {"url": "redis://redis:6379/0", "secretRef": ref("redis")},
                },
            },
        },
        {
            "apiVersion": API,
            "kind": "RAGPipeline",
            "metadata": {"name": "docs"},
            "spec": {
                "embedding": {"serviceRef": {"name": "minilm"}, "apiKeySecretRef": ref("api-key")},
                # The one Secret the operator reads itself; Delete: it reads it again to drop.
                "vectorStore": {
                    "milvus": {"uri": milvus_uri, "secretRef": ref("milvus-token"), "deletionPolicy": "Delete"}
                },
                "sources": [{"configMap": {"name": "docs"}}],
                "server": {"auth": {"apiKeySecretRef": ref("api-key")}},
            },
        },
        {
            "apiVersion": API,
            "kind": "RAGPipeline",
            "metadata": {"name": "unreachable"},
            "spec": {
                "embedding": {"serviceRef": {"name": "minilm"}},
                "vectorStore": {"milvus": {"uri": dead_uri, "secretRef": ref("milvus-token")}},
            },
        },
        {
            "apiVersion": API,
            "kind": "FineTuneJob",
            "metadata": {"name": "tune"},
            "spec": {
                "task": "embedding",
                "baseModel": {"name": MODEL, "source": {"huggingface": {"tokenSecretRef": ref("hf-token")}}},
                "dataset": {"configMap": {"name": "pairs", "key": "train.jsonl"}},
                "output": {"pvc": {"claimName": "out", "create": True, "size": "1Gi", "retain": False}},
            },
        },
    ]


def cond(kube: Kube, kind: str, ns: str, name: str, type_: str, status: str = "True",
         reason: str | None = None) -> dict[str, Any]:  # fmt: skip
    def probe() -> dict[str, Any] | None:
        obj: dict[str, Any] = kube.get(kind, name, ns)
        c = condition(obj, type_)
        fits = c and c["status"] == status and (reason is None or c["reason"] == reason)
        return obj if fits else None

    return wait_for(f"{kind} {ns}/{name} {type_}={status} {reason or ''}", probe, timeout=90)


@pytest.mark.cluster
def test_a_planted_secret_appears_nowhere(
    kube: Kube, operator: OperatorProcess, namespace: str, volumes: Volumes, tmp_path: Path
) -> None:
    canary = f"canary{secrets.token_hex(20)}"
    wrong = f"wrong{secrets.token_hex(20)}"  # a caller's bad guess: not to be logged either
    keys = ("api-key", "hf-token", "milvus-token", "redis")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "canary"},
            "stringData": dict.fromkeys(keys, canary),
        },
        namespace,
    )
    # The test can fail: the value is in the Secret, and the search finds it there in base64.
    secret = kube.get("secret", "canary", namespace)
    assert all(base64.b64decode(secret["data"][k]).decode() == canary for k in keys)
    assert leaks(json.dumps(secret), canary) and leaks(f"x{secret['data']['redis']}y", canary)

    # A real embedding server: the value is its API key (a mounted file, as in a pod) and HF_TOKEN.
    key_file = tmp_path / "secret" / "api-key"
    key_file.parent.mkdir()
    key_file.write_text(canary + "\n")
    config = {
        "model": {"name": MODEL, "path": minilm_path()},
        "auth": {"apiKeyFile": str(key_file)},
        "audit": {"enabled": True},
        "logLevel": "DEBUG",
    }
    server = ServerProcess("llmops_workloads.embedding", config, tmp_path / "server", env={"HF_TOKEN": canary})
    server.start(wait_ready=False)
    milvus = MilvusLite(tmp_path / "milvus").start()
    try:
        volumes.pv(namespace, "out")
        for obj in resources(milvus.uri, "http://127.0.0.1:1"):
            kube.apply(obj, namespace)

        # Reconciled: Ready, ingested, dropped, failed, succeeded (kwok runs the pods).
        cond(kube, "emb", namespace, "minilm", "Ready")
        cond(kube, "rag", namespace, "docs", "IngestionSucceeded")
        rag = cond(kube, "rag", namespace, "docs", "Ready")
        assert rag["metadata"]["finalizers"] == ["llmops.dev/drop-collection"]
        cond(kube, "rag", namespace, "unreachable", "CollectionReady", "False", "MilvusUnavailable")
        cond(kube, "ftj", namespace, "tune", "Succeeded")
        kube.run("delete", "rag", "docs", "-n", namespace, "--wait=false")
        wait_for("RAGPipeline docs deleted", lambda: not kube.exists("rag", "docs", namespace), timeout=60)

        # Right and wrong keys, both headers, then a rotation (the reload logs key names).
        wait_for("embedding server ready", lambda: server.status("/ready") == 200, timeout=120)
        url = f"{server.url}/v1/embeddings"
        for headers, status in (
            ({"Authorization": f"Bearer {canary}"}, 200),
            ({"X-API-Key": canary}, 200),
            ({"Authorization": f"Bearer {wrong}"}, 401),
            ({"X-API-Key": wrong}, 401),
            ({"Authorization": f"Bearer {canary[:-1]}"}, 401),
            ({}, 401),
        ):
            assert httpx.post(url, json={"input": "hello"}, headers=headers, timeout=30).status_code == status
        key_file.write_text(f"primary:{canary}\nsecondary:{wrong}x\n")
        time.sleep(1.2)  # the file is checked at most once a second
        r = httpx.post(url, json={"input": "after rotation"}, headers={"X-API-Key": canary}, timeout=30)
        assert r.status_code == 200
        assert httpx.post(url, json={"input": "x"}, headers={"X-API-Key": wrong}, timeout=30).status_code == 401

        time.sleep(1)  # the last log lines and Events flushed
        places = {
            "operator logs": "\n".join(p.read_text(errors="replace") for p in operator.log_dir.glob("operator-*.log")),
            "operator metrics": http_text(f"http://127.0.0.1:{operator.metrics_port}/metrics"),
            "embedding server log": server.log(),
            "embedding server metrics": http_text(f"{server.url}/metrics"),
            "Events": kube.run("get", "events", "-A", "-o", "json"),
            "llmops objects": kube.run("get", "emb,rag,ftj", "-A", "-o", "json"),
            "children and everything else in the namespace": kube.run(
                "get",
                "configmaps,services,deployments,jobs,cronjobs,pods,pvc,networkpolicies,hpa,pdb",
                "-n",
                namespace,
                "-o",
                "json",
            ),
        }
        # The places are real: the reconciles and the requests left their marks.
        assert "caches synced" in places["operator logs"]
        assert "API keys reloaded" in places["embedding server log"] and "primary" in places["embedding server log"]
        assert "CollectionDropped" in places["Events"] and "MilvusUnavailable" in places["llmops objects"]
        assert "canary" in places["children and everything else in the namespace"]  # the Secret's name, by reference
        found = {where: hits for where, text in places.items() if (hits := leaks(text, canary) + leaks(text, wrong))}
        sizes = ", ".join(f"{where} {len(text) // 1024} KiB" for where, text in places.items())
        print(f"\nsearched for the canary (plain and base64) and a wrong key: {sizes}")
        assert found == {}, json.dumps(found, indent=1)[:6000]
    finally:
        server.stop()
        milvus.stop()
