"""Shared fixtures: one real local control plane per test session, and a namespace per test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from llmops_dev.cluster import ClusterState, reap_stale, running

from kube import Kube

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _tested_against:
        terminalreporter.write_line(
            f"tested against kube-apiserver {_tested_against['server']} "
            f"(local control plane started in {_tested_against['startup']})"
        )
