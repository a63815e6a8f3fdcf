from __future__ import annotations

import pytest

from llmops_dev.cluster import build


def test_versions_file_pins_every_component() -> None:
    versions = build.load_versions()
    assert set(versions) == {"kubernetes", "etcd", "kwok", "helm", "promtool"}
    k8s = versions["kubernetes"]
    # The staging modules must be the release that matches kubernetes itself (1.X.Y <-> 0.X.Y).
    assert k8s["staging"] == "v0." + k8s["version"].split(".", 1)[1]


def test_kubernetes_ldflags_set_both_version_packages() -> None:
    flags = build.kubernetes_ldflags("v1.36.3")
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert f"-X {pkg}.gitVersion=v1.36.3" in flags
        assert f"-X {pkg}.gitMajor=1" in flags
        assert f"-X {pkg}.gitMinor=36" in flags


@pytest.mark.parametrize(
    ("package", "binary"),
    [
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("go.etcd.io/etcd/server/v3", "etcd"),
        ("go.etcd.io/etcd/etcdctl/v3", "etcdctl"),
        ("helm.sh/helm/v3/cmd/helm", "helm"),
    ],
)
def test_binary_names(package: str, binary: str) -> None:
    assert build._binary_name(package) == binary


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("LLMOPS_CACHE", str(tmp_path))
    assert str(build.cache_dir()) == str(tmp_path)
