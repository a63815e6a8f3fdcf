"""Build the control-plane binaries from the Go module proxy and cache them by version.

Every component is built the same way: a throw-away wrapper module requires the upstream
module at the pinned version (plus ``replace`` lines where upstream needs them), ``go get``
resolves the packages, and ``go build`` writes the binaries with version ldflags set, so that
``kubectl version`` and ``helm version`` report real versions. A finished build is marked by a
stamp file; a later ``ensure_binaries()`` with the same versions returns in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

VERSIONS_FILE = Path(__file__).resolve().parent.parent / "versions.toml"
STAMP = ".llmops-build.json"


def cache_dir() -> Path:
    """Where builds live: outside the clone, so a fresh clone (CI) reuses them."""
    root = os.environ.get("LLMOPS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "llmops"


def load_versions(path: Path = VERSIONS_FILE) -> dict[str, dict[str, str]]:
    with path.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class Component:
    """One Go build: which module, which packages, which ldflags."""

    name: str
    module: str
    version: str
    packages: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    # Kubernetes only: every staging module is replaced by its published release at this version.
    staging_version: str | None = None
    toolchain: str = "local"
    # Files that the binary needs beside it, concatenated from the module's own source tree
    # (output name -> paths inside the module), e.g. kwok's stage definitions.
    assets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Go build tags (go get and go build), e.g. to leave out code the binary is not used for.
    tags: tuple[str, ...] = ()

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(_binary_name(p) for p in self.packages)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


def _binary_name(package: str) -> str:
    """The binary a main package builds to: the last path element, less a major-version suffix
    (go.etcd.io/etcd/etcdctl/v3 -> etcdctl); etcd's server package is the ``etcd`` binary."""
    parts = package.rstrip("/").split("/")
    if re.fullmatch(r"v\d+", parts[-1]):
        parts = parts[:-1]
    return "etcd" if parts[-1] == "server" and package.startswith("go.etcd.io/") else parts[-1]


def _go_env(toolchain: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": toolchain,
            "GOFLAGS": "-mod=mod -buildvcs=false",
            "GOWORK": "off",
        }
    )
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); log {log}:\n{tail}")


def _mod_download(module: str, version: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``go mod download -json``: where the module cache holds a module's go.mod and source."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        check=True,
        capture_output=True,
        text=True,
        env=env or _go_env("local"),
        cwd=cache_dir(),
    ).stdout
    info: dict[str, str] = json.loads(out)
    return info


def kubernetes_staging_modules(version: str, env: dict[str, str] | None = None) -> list[str]:
    """The staging modules that this Kubernetes release replaces with ./staging/src/...

    Read from the release's own go.mod rather than hard-coded: the list grows between releases.
    """
    gomod = Path(_mod_download("k8s.io/kubernetes", version, env)["GoMod"]).read_text()
    modules = []
    for line in gomod.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "=>" and parts[2].startswith("./staging/src/"):
            modules.append(parts[0])
    if not modules:
        raise RuntimeError(f"no staging replaces found in k8s.io/kubernetes@{version} go.mod")
    return modules


def kubernetes_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = []
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in values.items()]
    return tuple(flags)


def prometheus_release(module_version: str) -> str:
    """Prometheus 3.x tags its Go module v0.3MM.P for release v3.MM.P (v0.316.0 -> 3.16.0)."""
    m = re.fullmatch(r"v0\.(\d)(\d\d)\.(\d+)", module_version)
    if m is None:
        raise ValueError(f"not a Prometheus v3 module version: {module_version!r}")
    return f"{m[1]}.{int(m[2])}.{m[3]}"


def prometheus_ldflags(module_version: str) -> tuple[str, ...]:
    """What promu sets, so that ``promtool --version`` reports the release it was built from."""
    pkg = "github.com/prometheus/common/version"
    values = {
        "Version": prometheus_release(module_version),
        "Revision": module_version,
        "Branch": "HEAD",
        "BuildUser": "llmops-dev",
        "BuildDate": "19700101-00:00:00",
    }
    return tuple(f"-X {pkg}.{k}={v}" for k, v in values.items())


def components(versions: Mapping[str, Mapping[str, str]]) -> list[Component]:
    k8s = versions["kubernetes"]
    kube_major, kube_minor = k8s["version"].lstrip("v").split(".")[:2]
    helm_v = versions["helm"]["version"]
    return [
        Component(
            name="kubernetes",
            module="k8s.io/kubernetes",
            version=k8s["version"],
            packages=tuple(
                f"k8s.io/kubernetes/cmd/{c}"
                for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
            ),
            ldflags=kubernetes_ldflags(k8s["version"]),
            staging_version=k8s["staging"],
        ),
        Component(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version=versions["etcd"]["version"],
            packages=("go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/etcdctl/v3"),
            ldflags=(f"-X go.etcd.io/etcd/api/v3/version.GitSHA={versions['etcd']['version']}",),
        ),
        Component(
            name="kwok",
            module="sigs.k8s.io/kwok",
            version=versions["kwok"]["version"],
            packages=("sigs.k8s.io/kwok/cmd/kwok",),
            ldflags=(
                f"-X sigs.k8s.io/kwok/pkg/consts.Version={versions['kwok']['version']}",
                f"-X sigs.k8s.io/kwok/pkg/consts.KubeVersion={k8s['version']}",
            ),
            toolchain=versions["kwok"].get("toolchain", "local"),
            # kwok has no stages built in: these are upstream's "fast" node and pod stages
            # (nodes go Ready and keep a lease; pods go Running/Ready; Job pods complete).
            assets={
                "kwok-stages.yaml": (
                    "kustomize/stage/node/fast/node-initialize.yaml",
                    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
                    "kustomize/stage/pod/fast/pod-ready.yaml",
                    "kustomize/stage/pod/fast/pod-complete.yaml",
                    "kustomize/stage/pod/fast/pod-delete.yaml",
                )
            },
        ),
        Component(
            name="helm",
            module="helm.sh/helm/v3",
            version=helm_v,
            packages=("helm.sh/helm/v3/cmd/helm",),
            ldflags=(
                f"-X helm.sh/helm/v3/internal/version.version={helm_v}",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={kube_major}",
                f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={kube_minor}",
                f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={kube_major}",
                f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={kube_minor}",
            ),
        ),
        *_optional_components(versions),
    ]


def _optional_components(versions: Mapping[str, Mapping[str, str]]) -> list[Component]:
    """Development tools next to the control plane, built only where versions.toml pins them."""
    out: list[Component] = []
    if "promtool" in versions:
        # Checks and unit-tests the Prometheus rules in charts/monitoring/ (docs/monitoring.md).
        version = versions["promtool"]["version"]
        out.append(
            Component(
                name="promtool",
                module="github.com/prometheus/prometheus",
                version=version,
                packages=("github.com/prometheus/prometheus/cmd/promtool",),
                ldflags=prometheus_ldflags(version),
                # Without the cloud service-discovery plugins (AWS, Azure, GCE, ...): promtool is
                # used here for rules only, and the build takes half the time.
                tags=("remove_all_sd",),
                toolchain=versions["promtool"].get("toolchain", "local"),
            )
        )
    return out


def is_built(c: Component) -> bool:
    dest = cache_dir() / "bin" / c.key
    files = (*c.binaries, *c.assets)
    return (dest / STAMP).exists() and all((dest / f).exists() for f in files)


def _write_assets(c: Component, dest: Path, env: dict[str, str]) -> None:
    if not c.assets:
        return
    source = Path(_mod_download(c.module, c.version, env)["Dir"])
    for name, parts in c.assets.items():
        docs = [(source / p).read_text().strip() for p in parts]
        (dest / name).write_text("\n---\n".join(docs) + "\n")


def build(c: Component, verbose: bool = True) -> Path:
    """Build one component into the cache (no-op when its stamp is there)."""
    dest = cache_dir() / "bin" / c.key
    if is_built(c):
        return dest
    if (dest / STAMP).exists() and all((dest / b).exists() for b in c.binaries):
        _write_assets(c, dest, _go_env(c.toolchain))  # assets added after the binary was built
        return dest
    work = cache_dir() / "src" / c.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = cache_dir() / "logs" / f"{c.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    gomod = [f"module llmops.dev/build/{c.name}", "", "go 1.24", ""]
    env = _go_env(c.toolchain)
    if c.staging_version:
        staging = kubernetes_staging_modules(c.version, env)
        gomod += [f"replace {m} => {m} {c.staging_version}" for m in staging]
    (work / "go.mod").write_text("\n".join(gomod) + "\n")
    started = time.monotonic()
    if verbose:
        print(f"building {c.key} (log: {log}) ...", file=sys.stderr, flush=True)
    # etcdctl is its own module; every package is pinned to the component's release.
    tags = ["-tags", ",".join(c.tags)] if c.tags else []
    _run(["go", "get", *tags, *(f"{p}@{c.version}" for p in c.packages)], work, env, log)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ldflags = " ".join(("-s", "-w", *c.ldflags))
    for pkg in c.packages:  # one at a time: etcd and etcdctl would both build to "v3"
        out = tmp / _binary_name(pkg)
        _run(["go", "build", *tags, "-trimpath", "-ldflags", ldflags, "-o", str(out), pkg], work, env, log)
    _write_assets(c, tmp, env)
    elapsed = time.monotonic() - started
    (tmp / STAMP).write_text(json.dumps({"component": c.key, "seconds": round(elapsed, 1)}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    if verbose:
        print(f"built {c.key} in {elapsed:.0f}s", file=sys.stderr, flush=True)
    return dest


def ensure_binaries(verbose: bool = True) -> dict[str, Path]:
    """Return {binary name: path} for every control-plane binary, building what is missing."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    if shutil.which("go") is None:
        raise RuntimeError("Go is needed to build the local control plane (go not on PATH)")
    paths: dict[str, Path] = {}
    for c in components(load_versions()):
        dest = build(c, verbose=verbose)
        for b in c.binaries:
            paths[b] = dest / b
    return paths


if __name__ == "__main__":
    for name, path in ensure_binaries().items():
        print(f"{name}\t{path}")
