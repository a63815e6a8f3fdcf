"""A thin test client over the real kubectl: JSON in, JSON out, and polling with clear failures."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llmops_dev.cluster import ClusterState

T = TypeVar("T")


class KubectlError(AssertionError):
    pass


class Kube:
    def __init__(self, state: ClusterState, kubeconfig: str | None = None) -> None:
        self.state = state
        self.kubeconfig = kubeconfig or state.kubeconfig
        self.kubectl_path = str(Path(state.bin_dir) / "kubectl")
        self.helm_path = str(Path(state.bin_dir) / "helm")

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

    def as_token(self, token: str, path: Path) -> Kube:
        """The same cluster seen by a bearer token (for example a service account's)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": self.state.server,
                        "certificate-authority": str(Path(self.state.root) / "pki" / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return Kube(self.state, str(path))

    def get(self, kind: str, name: str | None = None, namespace: str | None = None, managed: bool = False) -> Any:
        args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
        if managed:
            args.append("--show-managed-fields")
        if namespace:
            args += ["-n", namespace]
        return json.loads(self.run(*args))

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
        if namespace:
            args += ["-n", namespace]
        return bool(self.run(*args).strip())

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None) -> str:
        doc = manifest if isinstance(manifest, dict) else {"apiVersion": "v1", "kind": "List", "items": manifest}
        args = ["apply", "--server-side", "--field-manager=pytest", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, input=json.dumps(doc))

    def try_apply(self, manifest: dict[str, Any], namespace: str | None = None) -> tuple[bool, str]:
        """Apply and return (accepted, message): for checking what the API server refuses."""
        args = ["apply", "--server-side", "--field-manager=pytest", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        proc = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            input=json.dumps(manifest),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.helm_path, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise KubectlError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except KubectlError as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}"[:4000])
        time.sleep(interval)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def contains(want: Any, have: Any) -> bool:
    """Every field of ``want`` is in ``have`` with the same value (server defaults may add more)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and contains(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(contains, want, have))
    return bool(want == have)


def crd_manifest(group: str, kind: str, plural: str, schema: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    """A one-version, namespaced CustomResourceDefinition for tests."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }
