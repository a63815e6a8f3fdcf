"""Shared fixtures: one real local control plane per test session, and a namespace per test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops_dev.cluster import ClusterState, reap_stale, running
from llmops_dev.operator_process import OperatorProcess

from kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[1]

_tested_against: dict[str, str] = {}


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterState]:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok, started once per session.

    Every process dies with this test session (PR_SET_PDEATHSIG), and clusters left by an
    earlier crashed session are reaped first.
    """
    reap_stale()
    with running(f"pytest-{os.getpid()}") as state:
        kube = Kube(state)
        version = json.loads(kube.run("version", "-o", "json"))["serverVersion"]
        _tested_against["server"] = version["gitVersion"]
        _tested_against["startup"] = f"{state.started_seconds:.1f}s"
        yield state


@pytest.fixture(scope="session")
def kube(cluster: ClusterState) -> Kube:
    return Kube(cluster)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.run("create", "namespace", name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crds(kube: Kube) -> list[str]:
    """The generated CRDs, installed and Established."""
    kube.run("apply", "--server-side", "-f", str(REPO / "crds"))
    names = [
        n.split("/", 1)[1]
        for n in kube.run("get", "crd", "-l", "app.kubernetes.io/part-of=llmops", "-o", "name").split()
    ]
    for name in names:
        wait_for(
            f"CRD {name} Established",
            lambda n=name: (
                "True"
                in kube.run("get", "crd", n, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}")
            ),  # type: ignore[misc]
        )
    return names


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterState, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as a subprocess, watching every namespace; resyncs every 5 s so that tests
    see reconciles happen even when nothing changes."""
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), resync_seconds=5)
    proc.start()
    yield proc
    proc.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _tested_against:
        terminalreporter.write_line(
            f"tested against kube-apiserver {_tested_against['server']} "
            f"(local control plane started in {_tested_against['startup']})"
        )
