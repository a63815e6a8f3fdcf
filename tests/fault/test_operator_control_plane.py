"""The control plane under the operator goes away and comes back (issue 9, scenarios 3 and 4;
docs/reliability.md).

3. kube-apiserver stopped for a while, then started again (same ports, certificates, etcd).
4. etcd stopped for a while, then started again on the same data directory (the API server
   stays up and answers errors meanwhile).

Either way the operator must neither exit nor wedge: its watches resume, and a change made
right after the return is reconciled within seconds (the figure). These run on a cluster of
their own, so the session's cluster is never disturbed.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
import pytest

from faults import Figures, scale
from llmops_dev.cluster import ClusterState, running
from llmops_dev.cluster.controlplane import start_again, stop_process
from llmops_dev.operator_process import OperatorProcess
from llmops_operator.main import configure_kopf

from kube import Kube, condition, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.fault]

REPO = Path(__file__).resolve().parents[2]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def emb(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {"model": {"name": MODEL}, "replicas": replicas, "resources": {"cpu": "10m", "memory": "32Mi"}},
    }


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[ClusterState]:
    # Real kubelets post node and pod status again as soon as the API server is back; kwok takes
    # longer to renew its node leases, and the node controller would mark every pod NotReady
    # for good meanwhile: give the fake nodes more grace than the outage lasts.
    with running(f"fault-{os.getpid()}", controller_manager_args=("--node-monitor-grace-period=5m",)) as state:
        kube = Kube(state)
        kube.run("apply", "--server-side", "-f", str(REPO / "crds"))
        kube.run("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=llmops")
        yield state


@pytest.fixture
def own_operator(own_cluster: ClusterState, tmp_path: Path) -> Iterator[OperatorProcess]:
    # No periodic resync (the default is 10 minutes): what is reconciled after the outage comes
    # through the watches, which is what this checks.
    proc = OperatorProcess(own_cluster, tmp_path / "operator", resync_seconds=600)
    proc.start()
    yield proc
    proc.stop()


def ready(kube: Kube, ns: str, name: str, replicas: int) -> bool:
    obj = kube.get("emb", name, ns)
    gen = obj["metadata"]["generation"]
    c = condition(obj, "Ready") or {}
    status = obj.get("status") or {}
    return bool(
        c.get("status") == "True"
        and c.get("observedGeneration") == gen
        and status.get("observedGeneration") == gen
        and status.get("readyReplicas") == replicas
    )


def api_ready(kube: Kube) -> bool:
    return kube.run("get", "--raw", "/readyz", "--request-timeout=5s", check=False).strip() == "ok"


def apply(kube: Kube, obj: dict[str, Any], ns: str) -> bool:
    kube.apply(obj, ns)  # a KubectlError is retried by wait_for
    return True


def outage(
    state: ClusterState, kube: Kube, operator: OperatorProcess, component: str, seconds: float, figures: Figures
) -> None:
    """Stop ``component``, keep it away for ``seconds`` while checking that the operator lives,
    start it again, then check that watches resumed: a change made at once is reconciled."""
    ns = f"fault-{component}"
    kube.run("create", "namespace", ns)
    names = ["before-0", "before-1"]
    kube.apply([emb(n) for n in names], ns)
    for n in names:
        wait_for(f"{n} Ready", lambda n=n: ready(kube, ns, n, 1), timeout=120)  # type: ignore[misc]
    pid = operator.proc.pid if operator.proc else None

    stop_process(state, component)
    stopped = time.monotonic()
    while time.monotonic() - stopped < seconds:
        assert operator.running, f"the operator exited while {component} was down:\n{operator.log_path.read_text()}"
        time.sleep(1)
    start_again(state, component)
    wait_for("the API server ready again", lambda: api_ready(kube), timeout=120, interval=0.2)
    back = time.monotonic()

    # A change to an existing object and a new object, made the moment the API server is back.
    wait_for("the edit accepted", lambda: apply(kube, emb("before-0", replicas=2), ns), timeout=60, interval=0.2)
    wait_for("the new object accepted", lambda: apply(kube, emb("after"), ns), timeout=60, interval=0.2)
    wait_for(
        "the edit reconciled (Deployment scaled to 2)",
        lambda: kube.get("deployment", "before-0", ns)["spec"]["replicas"] == 2,
        timeout=120,
        interval=0.2,
    )
    edit_s = time.monotonic() - back
    wait_for("the new object's Deployment", lambda: kube.exists("deployment", "after", ns), timeout=120, interval=0.2)
    create_s = time.monotonic() - back
    wait_for("the new object Ready", lambda: ready(kube, ns, "after", 1), timeout=120, interval=0.2)
    ready_s = time.monotonic() - back
    wait_for("the edited object Ready at 2 replicas", lambda: ready(kube, ns, "before-0", 2), timeout=120)

    assert operator.running and operator.proc is not None and operator.proc.pid == pid, "the operator restarted"
    operator.wait_healthy(timeout=10)  # its liveness endpoint answers, caches synced
    for n in ("before-0", "before-1", "after"):
        c = condition(kube.get("emb", n, ns), "Degraded") or {}
        assert c.get("status") == "False", (n, c)
    figures["down_s"] = seconds
    figures["edit_reconciled_s"] = round(edit_s, 2)
    figures["new_object_applied_s"] = round(create_s, 2)
    figures["new_object_ready_s"] = round(ready_s, 2)
    # How much of that was the operator: its Ready against the Deployment's Available (the
    # controller-manager, scheduler and kwok resume at their own pace after an outage).
    after = kube.get("emb", "after", ns)
    available = condition(kube.get("deployment", "after", ns), "Available") or {}
    figures["ready_after_deployment_available_s"] = _epoch(
        (condition(after, "Ready") or {})["lastTransitionTime"]
    ) - _epoch(available["lastTransitionTime"])


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_apiserver_restart(own_cluster: ClusterState, own_operator: OperatorProcess, figures: Figures) -> None:
    outage(own_cluster, Kube(own_cluster), own_operator, "kube-apiserver", scale(15, 60), figures)


def test_etcd_restart(own_cluster: ClusterState, own_operator: OperatorProcess, figures: Figures) -> None:
    outage(own_cluster, Kube(own_cluster), own_operator, "etcd", scale(10, 60), figures)


def test_kopf_retries_api_requests_for_ever() -> None:
    """What makes the watches come back within seconds, however long the outage: kopf's request
    retries never escalate, and are never more than 2 s apart (each request iterates afresh)."""
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    backoffs = settings.networking.error_backoffs
    assert isinstance(backoffs, Iterable)
    for _ in range(2):
        delays = list(itertools.islice(backoffs, 1000))
        assert len(delays) == 1000 and max(delays) <= 2.0 and delays[0] <= 1.0
