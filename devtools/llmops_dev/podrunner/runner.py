"""A development-only kubelet and kube-proxy for the local cluster: it registers a Node, runs the
pods the scheduler binds to it as local processes (each on its own loopback address), reports
them back as pods (phase, podIP, readiness from the declared probe, exit codes and termination
messages), binds PersistentVolumeClaims to local directories, and proxies every Service on a
loopback address of its own.

It is what lets the quickstart's pods really serve: the operator's Deployments, Services and
Jobs are the same objects a real cluster gets. What a real node does and this runner does not:
images (the container's command runs with this machine's Python), resource limits, security
contexts, network policies, ``kubectl exec``. ``kubectl logs`` works (``kubeletapi.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from llmops_operator.kube.client import ApiError, Client
from llmops_operator.kube.credentials import from_kubeconfig

from ..cluster.controlplane import _die_with_parent as die_with_parent
from . import kubeletapi
from .translate import LocalProcess, Lookups, NotReadyYet, translate

log = logging.getLogger("llmops.podrunner")

NODE_LABEL = "llmops.dev/local-runner"
MANAGED_BY_OPERATOR = "app.kubernetes.io/managed-by=llmops-operator"
TICK = 1.0
LEASE_SECONDS = 40
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def loopback(block: int, n: int) -> str:
    """The n-th address (from 1) of 127.<block>.0.0/16."""
    return f"127.{block}.{n // 254}.{n % 254 + 1}"


def node_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                NODE_LABEL: "true",
            },
        },
        "spec": {},
    }


def node_status(name: str, kubelet_port: int) -> dict[str, Any]:
    # The capacity is nominal: local processes share this machine and limits are not enforced.
    capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    stamp = now()
    return {
        "capacity": capacity,
        "allocatable": capacity,
        # Only an IP: the API server reaches a kubelet (kubectl logs) at the first address type it
        # prefers, and a Hostname would need DNS.
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "llmops local pod runner is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        ],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": "llmops-podrunner",
            "kubeProxyVersion": "llmops-podrunner",
            "containerRuntimeVersion": "local-process://1",
            "osImage": "local",
            "kernelVersion": os.uname().release,
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


@dataclass
class PodProcess:
    """One pod's container, run as a local process."""

    uid: str
    namespace: str
    name: str
    container: str
    ip: str
    pod_dir: Path
    restart_policy: str
    grace_seconds: float
    plan: LocalProcess | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    next_start: float = 0.0
    terminated: dict[str, Any] | None = None  # set once a run-to-completion container is done
    waiting: tuple[str, str] | None = None  # (reason, message) while it cannot start
    reported: str = ""  # the last status written, to write only changes
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.pod_dir / f"{self.container}.log"


class Runner:
    def __init__(self, kubeconfig: str, root: Path, node: str, node_env: dict[str, str], kubelet_port: int = 0) -> None:
        self.kubelet_port = kubelet_port
        self.client = Client(from_kubeconfig(kubeconfig), timeout=10)
        self.root = root
        self.node = node
        self.node_env = node_env
        self.pods: dict[str, PodProcess] = {}
        self.pod_ips = 0
        self.service_vips: dict[tuple[str, str], str] = {}
        self.proxies: dict[tuple[str, str, int], asyncio.Server] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.round_robin = 0
        self.deleting: set[str] = set()
        self.background: set[asyncio.Task[None]] = set()
        self._cache: dict[str, dict[str, Any]] = {}

    # -- the node ---------------------------------------------------------------------------

    async def register(self) -> None:
        try:
            await self.client.request("create", "POST", "/api/v1/nodes", body=node_object(self.node))
        except ApiError as exc:
            if exc.status != 409:
                raise
        status = node_status(self.node, self.kubelet_port)
        path = f"/api/v1/nodes/{self.node}/status"
        await self.client.request("patch", "PATCH", path, body={"status": status}, content_type=STRATEGIC)

    async def heartbeat(self) -> None:
        """Renew the node's Lease (how the node lifecycle controller knows it is alive)."""
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        while True:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro()},
            }
            try:
                await self.client.request(
                    "apply", "PATCH", f"{path}/{self.node}", body=lease,
                    params={"fieldManager": "llmops-podrunner", "force": "true"},
                    content_type="application/apply-patch+yaml",
                )  # fmt: skip
            except (ApiError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)
            await asyncio.sleep(10)

    # -- lookups for the translation ----------------------------------------------------------

    async def _list(self, path: str) -> list[dict[str, Any]]:
        data = await self.client.request("list", "GET", path)
        return list(data.get("items", []))

    async def _lookups(self, namespace: str) -> Lookups:
        cms = {c["metadata"]["name"]: c for c in await self._list(f"/api/v1/namespaces/{namespace}/configmaps")}
        secrets = {s["metadata"]["name"]: s for s in await self._list(f"/api/v1/namespaces/{namespace}/secrets")}
        claim_list = await self._list(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims")
        claims = {c["metadata"]["name"]: c for c in claim_list}
        volumes = {v["metadata"]["name"]: v for v in await self._list("/api/v1/persistentvolumes")}
        ours = frozenset(
            name
            for name, cm in cms.items()
            if cm["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "llmops-operator"
        )

        def claim_dir(name: str) -> Path | None:
            claim = claims.get(name)
            if claim is None or claim.get("status", {}).get("phase") != "Bound":
                return None
            pv = volumes.get(claim["spec"].get("volumeName", ""))
            host = (pv or {}).get("spec", {}).get("hostPath", {}).get("path")
            return Path(host) if host else None

        return Lookups(
            config_map=lambda n: (cms[n].get("data") or {}) if n in cms else None,
            secret=lambda n: (secrets[n].get("data") or {}) if n in secrets else None,
            claim_dir=claim_dir,
            service_address=self.service_vip,
            operator_config_maps=ours,
        )

    def service_vip(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        if key not in self.service_vips:
            self.service_vips[key] = loopback(2, len(self.service_vips) + 1)
        return self.service_vips[key]

    # -- persistent volumes -------------------------------------------------------------------

    async def provision(self) -> None:
        """Bind every pending claim to a hostPath volume under the runner's folder."""
        for claim in await self._list("/api/v1/persistentvolumeclaims"):
            if claim.get("status", {}).get("phase") != "Pending" or claim["spec"].get("volumeName"):
                continue
            meta = claim["metadata"]
            name = f"local-{meta['namespace']}-{meta['name']}"[:253]
            directory = self.root / "volumes" / meta["namespace"] / meta["name"]
            directory.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {NODE_LABEL: "true"}},
                "spec": {
                    "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
                    "accessModes": claim["spec"].get("accessModes", ["ReadWriteOnce"]),
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": claim["spec"].get("storageClassName") or "",
                    "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            try:
                await self.client.request("create", "POST", "/api/v1/persistentvolumes", body=pv)
                log.info("bound claim %s/%s to %s", meta["namespace"], meta["name"], directory)
            except ApiError as exc:
                if exc.status != 409:
                    raise

    # -- pods ----------------------------------------------------------------------------------

    async def sync_pods(self) -> None:
        listed = await self._list(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node}")
        seen = set()
        lookups: dict[str, Lookups] = {}
        for pod in listed:
            meta = pod["metadata"]
            uid = meta["uid"]
            seen.add(uid)
            pp = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if uid not in self.deleting:  # draining takes seconds: never block the others
                    self.deleting.add(uid)
                    task = asyncio.create_task(self._delete(pod, pp))
                    self.background.add(task)
                    task.add_done_callback(self.background.discard)
                continue
            if pp is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue  # finished before this runner started
                pp = self._admit(pod)
            if pp.plan is None and pp.terminated is None:
                ns = meta["namespace"]
                if ns not in lookups:
                    lookups[ns] = await self._lookups(ns)
                self._prepare(pp, pod, lookups[ns])
            self._supervise(pp)
            await self._probe(pp)
            await self._report(pp, pod)
        self.deleting &= seen
        for uid in set(self.pods) - seen:  # deleted behind our back (force delete, namespace gone)
            self._kill(self.pods.pop(uid), wait=False)

    def _admit(self, pod: dict[str, Any]) -> PodProcess:
        self.pod_ips += 1
        meta, spec = pod["metadata"], pod["spec"]
        pp = PodProcess(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            container=spec["containers"][0]["name"],
            ip=loopback(1, self.pod_ips),
            pod_dir=self.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}",
            restart_policy=spec.get("restartPolicy", "Always"),
            grace_seconds=float(spec.get("terminationGracePeriodSeconds", 30)),
            labels=dict(meta.get("labels", {})),
        )
        self.pods[pp.uid] = pp
        log.info("pod %s/%s admitted on %s", pp.namespace, pp.name, pp.ip)
        return pp

    def _prepare(self, pp: PodProcess, pod: dict[str, Any], lookups: Lookups) -> None:
        defaults = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(pp.pod_dir / "home"),
            "TMPDIR": str(pp.pod_dir / "tmp"),
        }
        # What the node decides whatever the pod says: the servers and the trainer bind the pod's
        # own address (as in a pod network), and models come from the local hub cache.
        forced = {**self.node_env, "LLMOPS_SERVER__HOST": pp.ip, "LLMOPS_PROGRESS__HOST": pp.ip}
        try:
            plan = translate(
                pod, pod_ip=pp.ip, pod_dir=pp.pod_dir, lookups=lookups, python=sys.executable, node_env=forced
            )
        except NotReadyYet as exc:
            pp.waiting = ("CreateContainerConfigError", str(exc))
            return
        plan.env = {**defaults, **plan.env}
        for directory in [*plan.dirs, pp.pod_dir / "home", pp.pod_dir / "tmp"]:
            directory.mkdir(parents=True, exist_ok=True)
        for path, content in plan.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        pp.plan = plan
        pp.waiting = None

    def _start(self, pp: PodProcess) -> None:
        assert pp.plan is not None
        if pp.plan.termination_log is not None:
            pp.plan.termination_log.write_text("")  # the kubelet creates it; programs only write it
        with pp.log_path.open("ab") as out:
            pp.proc = subprocess.Popen(
                pp.plan.argv,
                env=pp.plan.env,
                cwd=pp.pod_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # a runner that dies leaves nothing serving
            )
        pp.started_at = now()
        pp.ready = False
        log.info("pod %s/%s started: pid %d, %s", pp.namespace, pp.name, pp.proc.pid, " ".join(pp.plan.argv[:4]))

    def _supervise(self, pp: PodProcess) -> None:
        if pp.plan is None or pp.terminated is not None:
            return
        if pp.proc is None:
            if time.monotonic() >= pp.next_start:
                self._start(pp)
            return
        code = pp.proc.poll()
        if code is None:
            return
        pp.proc = None
        pp.ready = False
        log.info("pod %s/%s exited with %d", pp.namespace, pp.name, code)
        if pp.restart_policy == "Always" or (pp.restart_policy == "OnFailure" and code != 0):
            pp.restarts += 1
            pp.next_start = time.monotonic() + min(30.0, 2.0 ** min(pp.restarts, 5))
            pp.waiting = ("CrashLoopBackOff", f"exited with {code}; restarting")
            return
        self._terminated(pp, code)

    def _terminated(self, pp: PodProcess, code: int) -> None:
        """Record the container's end as a runtime reports it (killed by signal N: 128+N)."""
        pp.terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",  # as a kubelet says for any non-zero exit
            "message": self._termination_message(pp, code),
            "startedAt": pp.started_at,
            "finishedAt": now(),
        }

    @staticmethod
    def _termination_message(pp: PodProcess, code: int) -> str:
        message = ""
        if pp.plan is not None and pp.plan.termination_log is not None and pp.plan.termination_log.exists():
            message = pp.plan.termination_log.read_text(errors="replace")[:4096]
        if not message and code != 0 and pp.log_path.exists():  # FallbackToLogsOnError
            message = "\n".join(pp.log_path.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return message

    async def _probe(self, pp: PodProcess) -> None:
        if pp.proc is None or pp.plan is None:
            pp.ready = False
            return
        if pp.plan.readiness is None:
            pp.ready = True
            return
        path, port = pp.plan.readiness
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
                session.get(f"http://{pp.ip}:{port}{path}") as resp,
            ):
                pp.ready = 200 <= resp.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            pp.ready = False

    async def _report(self, pp: PodProcess, pod: dict[str, Any]) -> None:
        status = pod_status(pp)
        fingerprint = json.dumps(status, sort_keys=True, default=str)
        # startTime and the timestamps stay as first written; only a change of state is written.
        if fingerprint == pp.reported:
            return
        body = {"status": {**status, "startTime": pod.get("status", {}).get("startTime") or now()}}
        try:
            await self.client.request(
                "patch", "PATCH", f"/api/v1/namespaces/{pp.namespace}/pods/{pp.name}/status", body=body,
                content_type=STRATEGIC,
            )  # fmt: skip
            pp.reported = fingerprint
        except ApiError as exc:
            log.warning("status of %s/%s not written: %s", pp.namespace, pp.name, exc)

    async def _delete(self, pod: dict[str, Any], pp: PodProcess | None) -> None:
        meta = pod["metadata"]
        if pp is not None:
            grace = float(meta.get("deletionGracePeriodSeconds", pp.grace_seconds))
            code = await asyncio.get_running_loop().run_in_executor(None, self._stop, pp, grace)
            # A kubelet reports the terminal phase before the object goes: the Job controller
            # counts a pod (and applies podFailurePolicy to its exit code) only once it is terminal.
            if pp.terminated is None and code is not None:
                pp.proc = None
                self._terminated(pp, code)
                await self._report(pp, pod)
            self.pods.pop(pp.uid, None)
        # The kubelet's last word: the containers are gone, the object can go.
        with contextlib.suppress(ApiError):
            await self.client.request(
                "delete", "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                      "preconditions": {"uid": meta["uid"]}},
            )  # fmt: skip

    @staticmethod
    def _stop(pp: PodProcess, grace: float) -> int | None:
        """SIGTERM, up to the grace period, then SIGKILL; the exit status (None: nothing ran)."""
        if pp.proc is None:
            return None
        if pp.proc.poll() is not None:
            return pp.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pp.proc.pid, signal.SIGTERM)
        try:
            return pp.proc.wait(timeout=max(1.0, grace))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pp.proc.pid, signal.SIGKILL)
            return pp.proc.wait()

    def _kill(self, pp: PodProcess, wait: bool = True) -> None:
        if pp.proc is not None and pp.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pp.proc.pid, signal.SIGKILL)
            if wait:
                pp.proc.wait()

    # -- services --------------------------------------------------------------------------------

    async def sync_services(self) -> None:
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for svc in await self._list("/api/v1/services"):
            meta, spec = svc["metadata"], svc["spec"]
            if not spec.get("selector") or spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort"):
                continue
            key = (meta["namespace"], meta["name"])
            current[key] = svc
            vip = self.service_vip(*key)
            for port in spec.get("ports", []):
                pkey = (*key, int(port["port"]))
                if pkey not in self.proxies:
                    self.proxies[pkey] = await asyncio.start_server(self._handler(key, port), vip, int(port["port"]))
                    log.info("service %s/%s port %s on %s", key[0], key[1], port["port"], vip)
        for pkey in [k for k in self.proxies if (k[0], k[1]) not in current]:
            self.proxies.pop(pkey).close()
        self.services = current

    def _handler(
        self, key: tuple[str, str], port: dict[str, Any]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._proxy(reader, writer, key, port)

        return handle

    def endpoints(self, key: tuple[str, str], port: dict[str, Any]) -> list[tuple[str, int]]:
        svc = self.services.get(key)
        if svc is None:
            return []
        selector = svc["spec"]["selector"]
        target = port.get("targetPort", port["port"])
        out = []
        for pp in self.pods.values():
            if pp.namespace != key[0] or not pp.ready or pp.plan is None:
                continue
            if all(pp.labels.get(k) == v for k, v in selector.items()):
                number = pp.plan.ports.get(target) if isinstance(target, str) else int(target)
                if number:
                    out.append((pp.ip, number))
        return out

    async def _proxy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple[str, str], port: dict[str, Any]
    ) -> None:
        targets = self.endpoints(key, port)
        if not targets:  # no ready endpoint: refuse, as kube-proxy does
            writer.close()
            return
        self.round_robin += 1
        host, number = targets[self.round_robin % len(targets)]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, number)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def container_log(self, namespace: str, pod: str, container: str) -> tuple[Path, Callable[[], bool]] | None:
        """For ``kubectl logs``: the container's log file and whether it is still being written."""
        key = (namespace, pod, container)
        found = [pp for pp in self.pods.values() if (pp.namespace, pp.name, pp.container) == key]
        if not found:
            return None
        pp = found[0]
        return pp.log_path, lambda: pp.proc is not None and pp.uid in self.pods

    # -- the loop --------------------------------------------------------------------------------

    def write_state(self) -> None:
        state = {
            "node": self.node,
            "services": {
                f"{ns}/{name}": {"address": vip, "ports": [int(p["port"]) for p in svc["spec"].get("ports", [])]}
                for (ns, name), svc in self.services.items()
                for vip in [self.service_vip(ns, name)]
            },
            "pods": {
                f"{pp.namespace}/{pp.name}": {
                    "ip": pp.ip, "pid": pp.proc.pid if pp.proc else None, "ready": pp.ready, "log": str(pp.log_path),
                }
                for pp in self.pods.values()
            },
        }  # fmt: skip
        tmp = self.root / "runner.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.root / "runner.json")

    async def run(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        kubelet = None
        if self.kubelet_port:
            kubelet = await kubeletapi.serve(self.container_log, self.root / "pki", self.kubelet_port)
        await self.register()
        beat = asyncio.create_task(self.heartbeat())
        try:
            while True:
                try:
                    await self.provision()
                    await self.sync_services()
                    await self.sync_pods()
                    self.write_state()
                except (ApiError, OSError) as exc:
                    log.warning("sync failed (retrying): %s", exc)
                await asyncio.sleep(TICK)
        finally:
            beat.cancel()
            if kubelet is not None:
                await kubelet.cleanup()
            for pp in self.pods.values():
                self._kill(pp)
            await self.client.close()


def pod_status(pp: PodProcess) -> dict[str, Any]:
    """The status a kubelet would report for this pod's one container (pure)."""
    running = pp.proc is not None
    if pp.terminated is not None:
        phase = "Succeeded" if pp.terminated["exitCode"] == 0 else "Failed"
        state: dict[str, Any] = {"terminated": pp.terminated}
    elif running:
        phase, state = "Running", {"running": {"startedAt": pp.started_at}}
    else:
        reason, message = pp.waiting or ("ContainerCreating", "")
        phase, state = ("Running" if pp.restarts else "Pending"), {"waiting": {"reason": reason, "message": message}}
    ready = pp.ready and running
    flag = "True" if ready else "False"
    conditions = [
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": flag},
        {"type": "Ready", "status": flag},
    ]
    if pp.terminated is not None:
        for c in conditions[1:]:
            c["reason"] = "PodCompleted"
    return {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": pp.ip,
        "podIPs": [{"ip": pp.ip}],
        "conditions": conditions,
        "containerStatuses": [
            {
                "name": pp.container,
                "ready": ready,
                "started": running,
                "restartCount": pp.restarts,
                "image": "local-process",
                "imageID": "",
                "state": state,
            }
        ],
    }


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llmops_dev.podrunner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, help="folder for pods, volumes, logs and runner.json")
    parser.add_argument("--node", default="llmops-local-0")
    parser.add_argument("--hub-cache", help="HF_HUB_CACHE for every process (models cannot be downloaded here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    node_env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if args.hub_cache:
        node_env["HF_HUB_CACHE"] = args.hub_cache
    from ..cluster.controlplane import free_port

    runner = Runner(args.kubeconfig, Path(args.root), args.node, node_env, kubelet_port=free_port())
    loop = asyncio.new_event_loop()
    task = loop.create_task(runner.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    return 0
