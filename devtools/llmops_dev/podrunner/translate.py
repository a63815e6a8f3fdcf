"""Pure translation of a pod's container into a local process: argv, environment and the files
its volumes hold, with the pod's absolute mount paths and in-cluster Service names mapped to
places that exist on this machine.

There are no mount namespaces here (the runner needs no privileges), so a mount path such as
``/etc/llmops`` becomes a directory under the pod's own folder, and every place the pod names it
(command, args, env values and the operator's own config files) is rewritten to match. The
operator's config files are the only file contents rewritten: a user's documents are copied as
they are.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Service DNS names the operator writes (``http://<svc>.<ns>.svc.cluster.local:8080``).
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
SERVICE_HOST = re.compile(rf"(?<![\w.-])({_LABEL})\.({_LABEL})\.svc(?:\.cluster\.local)?(?![\w-])")

# A container's "python" is this machine's interpreter (the one with llmops installed).
PYTHON_NAMES = frozenset({"python", "python3"})


class NotReadyYet(Exception):
    """Something the pod needs does not exist yet (a ConfigMap, a Secret, an unbound claim):
    the kubelet's CreateContainerConfigError. The runner retries."""


@dataclass(frozen=True)
class Lookups:
    """What the translation reads from the cluster, as plain callables (tests pass dicts)."""

    config_map: Callable[[str], Mapping[str, str] | None]
    secret: Callable[[str], Mapping[str, str] | None]  # base64 values, as the API returns them
    claim_dir: Callable[[str], Path | None]  # a bound claim's directory on this machine
    service_address: Callable[[str, str], str]  # (namespace, service) -> a loopback address
    operator_config_maps: frozenset[str] = frozenset()  # names whose files are our config: rewritten


@dataclass
class LocalProcess:
    argv: list[str]
    env: dict[str, str]
    files: dict[Path, bytes] = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)
    termination_log: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number
    readiness: tuple[str, int] | None = None  # (path, port) of an httpGet readiness probe


class PathMap:
    """Absolute mount paths -> local directories, longest mount first."""

    def __init__(self, mounts: Mapping[str, Path]) -> None:
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        alternatives = "|".join(re.escape(m.rstrip("/")) for m, _ in self.mounts) or r"(?!)"
        # A mount path at the start of a token, followed by "/" or the token's end.
        self._pattern = re.compile(rf"(?<![\w.-])({alternatives})(?=/|$|[\s\"',:;\]}})])")

    def local(self, text: str) -> str:
        by_path = {m.rstrip("/"): str(p) for m, p in self.mounts}
        return self._pattern.sub(lambda m: by_path[m.group(1)], text)


def rewrite_services(text: str, lookups: Lookups) -> str:
    """``<svc>.<ns>.svc[.cluster.local]`` -> the address the runner proxies that Service on."""
    return SERVICE_HOST.sub(lambda m: lookups.service_address(m.group(2), m.group(1)), text)


def _field_ref(pod: Mapping[str, Any], path: str, pod_ip: str) -> str:
    meta = pod.get("metadata", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    raise NotReadyYet(f"fieldRef {path!r} is not supported by the local runner")


# (pod spec field, what it names): the two places a pod reads keys from.
_ENV_SOURCES = (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret"))
_ENV_FROM = (("configMapRef", "configmap"), ("secretRef", "secret"))
_VOLUMES = (("configMap", "configmap", "name"), ("secret", "secret", "secretName"))


def _contents(lookups: Lookups, kind: str, name: str) -> dict[str, bytes] | None:
    """A ConfigMap's or a Secret's data as bytes (Secret values arrive base64-encoded); None
    when it does not exist."""
    if kind == "configmap":
        cm = lookups.config_map(name)
        return None if cm is None else {k: str(v).encode() for k, v in cm.items()}
    secret = lookups.secret(name)
    return None if secret is None else {k: base64.b64decode(v) for k, v in secret.items()}


def _env_value(pod: Mapping[str, Any], item: Mapping[str, Any], pod_ip: str, lookups: Lookups) -> str | None:
    if "value" in item:
        return str(item["value"])
    source = item.get("valueFrom", {})
    if "fieldRef" in source:
        return _field_ref(pod, source["fieldRef"]["fieldPath"], pod_ip)
    for ref_field, kind in _ENV_SOURCES:
        if ref_field in source:
            ref = source[ref_field]
            data = _contents(lookups, kind, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise NotReadyYet(f"{kind} {ref['name']!r} key {ref['key']!r} not found")
            return data[ref["key"]].decode()
    if "resourceFieldRef" in source:
        return "1"  # limits are not enforced locally
    return None


def _volume_files(volume: Mapping[str, Any], target: Path, lookups: Lookups) -> dict[Path, bytes]:
    """The files a configMap or secret volume holds (keys or ``items``), by local path."""
    found = [(volume[f], kind, volume[f][key]) for f, kind, key in _VOLUMES if f in volume]
    if not found:
        return {}
    ref, kind, name = found[0]
    data = _contents(lookups, kind, name)
    if data is None:
        if ref.get("optional"):
            return {}
        raise NotReadyYet(f"{kind} {name!r} not found")
    items = ref.get("items") or [{"key": k, "path": k} for k in data]
    return {target / item["path"]: data[item["key"]] for item in items if item["key"] in data}


def translate(
    pod: Mapping[str, Any],
    *,
    pod_ip: str,
    pod_dir: Path,
    lookups: Lookups,
    python: str,
    node_env: Mapping[str, str],
) -> LocalProcess:
    """The local process for the pod's first container (our pods have one)."""
    spec = pod["spec"]
    container = spec["containers"][0]
    if not container.get("command"):
        raise NotReadyYet("the local runner needs an explicit command (it cannot run an image's entrypoint)")

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts: dict[str, Path] = {}
    files: dict[Path, bytes] = {}
    dirs: list[Path] = []
    rewrite_contents: set[Path] = set()
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            raise NotReadyYet(f"volume {mount['name']!r} is not declared")
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            base = lookups.claim_dir(claim)
            if base is None:
                raise NotReadyYet(f"persistentvolumeclaim {claim!r} is not bound")
            where = base / mount.get("subPath", "")
        else:
            where = pod_dir / "volumes" / mount["name"] / mount.get("subPath", "")
            content = _volume_files(volume, where, lookups)
            files.update(content)
            if "configMap" in volume and volume["configMap"]["name"] in lookups.operator_config_maps:
                rewrite_contents.update(content)
        dirs.append(where)
        mounts[mount["mountPath"]] = where

    termination_log = pod_dir / "termination-log"
    mounts[container.get("terminationMessagePath", "/dev/termination-log")] = termination_log
    paths = PathMap(mounts)

    def local(text: str) -> str:
        return rewrite_services(paths.local(text), lookups)

    for path in rewrite_contents:
        files[path] = local(files[path].decode()).encode()

    env: dict[str, str] = {}
    for item in container.get("env", []):
        value = _env_value(pod, item, pod_ip, lookups)
        if value is not None:
            env[item["name"]] = local(value)
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for ref_field, kind in _ENV_FROM:
            if ref_field in source:
                data = _contents(lookups, kind, source[ref_field]["name"]) or {}
                # Configuration may name mount paths and Services; a Secret's values stay as they are.
                keep = (lambda v: v) if kind == "secret" else local
                env.update({prefix + k: keep(v.decode()) for k, v in data.items()})
    env.update(node_env)

    argv = [local(a) for a in [*container["command"], *container.get("args", [])]]
    if argv[0] in PYTHON_NAMES:
        argv[0] = python
    ports = {p.get("name", str(p["containerPort"])): int(p["containerPort"]) for p in container.get("ports", [])}
    readiness = None
    probe = container.get("readinessProbe", {}).get("httpGet")
    if probe:
        port = probe["port"]
        readiness = (str(probe.get("path", "/")), ports[port] if isinstance(port, str) else int(port))
    return LocalProcess(
        argv=argv,
        env=env,
        files=files,
        dirs=dirs,
        termination_log=termination_log,
        ports=ports,
        readiness=readiness,
    )
