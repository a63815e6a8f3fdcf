"""Start and stop a real local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, all on 127.0.0.1 with free ports.

This is envtest for Python plus what envtest leaves out (controller-manager for garbage
collection, Deployments and Jobs; scheduler and kwok so that pods get nodes and run). Each
cluster lives in one state directory (certificates, etcd data, logs, kubeconfigs and
``state.json`` with the pids); ``down`` stops those pids and removes the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import build, pki
from .nodes import default_nodes

# A /16: room for thousands of Services (the scale benchmark makes one per EmbeddingService).
SERVICE_CIDR = "10.0.0.0/16"
KUBERNETES_SERVICE_IP = "10.0.0.1"
POD_CIDR = "10.244.0.0/16"
OPERATOR_USER = "llmops-operator"
# Metadata-level audit records of what the operator's user sends: tests count its writes.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}
# The controller-manager's and scheduler's client-side rate limits (defaults 20/30 and 50/100).
CLIENT_RATE_LIMITS = ("--kube-api-qps=500", "--kube-api-burst=1000")
# The Go processes (etcd, kube-apiserver, ...) collect garbage less often than Go's default
# (GOGC=100): this machine has memory to spare and two cores, and the API server spends a good
# part of a burst in its garbage collector (docs/reliability.md, "Scale").
GO_RUNTIME_ENV = {"GOGC": os.environ.get("LLMOPS_CLUSTER_GOGC", "400")}
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The control plane could not be started, or is not in the state asked for."""


@dataclass
class ClusterState:
    """What ``state.json`` records about a running cluster."""

    name: str
    root: str
    kubeconfig: str
    server: str
    server_version: str
    bin_dir: str
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    # The command line of each process, so that one can be stopped and started again as it was
    # (fault tests: the API server or etcd down for a while).
    commands: dict[str, list[str]] = field(default_factory=dict)
    # A test session's pid: when it is gone, the cluster is stale and may be reaped.
    owner_pid: int | None = None
    started_seconds: float = 0.0

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def operator_kubeconfig(self) -> str:
        """A kubeconfig for the operator under test (user llmops-operator)."""
        return str(self.root_path / "operator.kubeconfig")

    @property
    def audit_log(self) -> Path:
        """Audit records (JSON lines) of every request the operator's user made."""
        return self.root_path / "audit.log"

    def env(self) -> dict[str, str]:
        """Environment for clients: KUBECONFIG and the binaries first on PATH."""
        return {
            "KUBECONFIG": self.kubeconfig,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }


def runs_dir() -> Path:
    return build.cache_dir() / "run"


def state_file(name: str) -> Path:
    return runs_dir() / name / "state.json"


def load_state(name: str) -> ClusterState | None:
    path = state_file(name)
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def _save_state(state: ClusterState) -> None:
    path = state_file(state.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port *below* the kernel's ephemeral range.

    A port handed out by bind(0) comes from the ephemeral range, and between choosing it and
    the server binding it, any outgoing connection (etcd's clients, the API server's watches)
    may take it as its source port. Ports below the range are never used that way.
    """
    low, _ = _ephemeral_range()
    lowest = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = random.randint(lowest, low - 1)  # noqa: S311 (not cryptographic)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError("no free port below the ephemeral range")


def pid_alive(pid: int) -> bool:
    """Whether any thread of the process still runs.

    A zombie still answers kill(0), and a thread-group leader shows as a zombie while its other
    threads are still exiting (and still hold its sockets), so look at every thread.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            return True
    return False


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL the child when the spawning process dies.

    This is how a crashed (or SIGKILLed) test session leaves nothing listening.
    """
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _kubeconfig(path: Path, server: str, ca: Path, user: str, client: pki.CertPair) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "llmops-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [{"name": "llmops-local", "context": {"cluster": "llmops-local", "user": user}}],
        "current-context": "llmops-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def wait_until(what: str, check: Callable[[], bool], timeout: float, on_fail: Callable[[], str] = str) -> None:
    """Poll ``check`` until it is true; a check that raises an I/O error counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, subprocess.SubprocessError, ValueError):
            pass
        time.sleep(0.2)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_fail()}")


class _Launcher:
    """Starts the processes of one cluster and remembers them for clean-up on failure."""

    def __init__(self, state: ClusterState, die_with_parent: bool) -> None:
        self.state = state
        self.die_with_parent = die_with_parent
        self.logs = state.root_path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            env={**os.environ, **GO_RUNTIME_ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.state.root,
            start_new_session=True,  # its own process group: `down` kills the whole group
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        log.close()
        self.procs[name] = proc
        self.state.pids[name] = proc.pid
        self.state.commands[name] = list(args)
        _save_state(self.state)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {path} (last {chars} chars) ---\n{text[-chars:]}"

    def alive(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise ClusterError(f"{name} exited with code {proc.returncode}\n{self.log_tail(name)}")
        return True


def _tls_context(ca: Path, client: pki.CertPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:  # noqa: S310 (our own loopback URL)
        return int(resp.status), resp.read()


def up(
    name: str = "local",
    *,
    die_with_parent: bool = False,
    owner_pid: int | None = None,
    nodes: list[dict[str, Any]] | None = None,
    timeout: float = 120.0,
    verbose: bool = True,
    controller_manager_args: tuple[str, ...] = (),
) -> ClusterState:
    """Start a cluster (building the binaries first when they are not cached).

    ``die_with_parent`` ties every process to the caller's life (for test sessions).
    ``controller_manager_args`` are added to kube-controller-manager's command line (e.g. a
    longer ``--node-monitor-grace-period`` for a cluster whose API server a test stops: kwok
    renews node leases slowly after an outage, and never marks pods Ready again that the node
    controller marked NotReady meanwhile, as a real kubelet would).
    """
    existing = load_state(name)
    if existing is not None and existing.pids and all(pid_alive(p) for p in existing.pids.values()):
        raise ClusterError(f"cluster {name!r} is already running (kubeconfig {existing.kubeconfig})")
    down(name)  # whatever a crashed run left: stray processes, the directory

    started = time.monotonic()
    binaries = build.ensure_binaries(verbose=verbose)
    versions = build.load_versions()
    root = runs_dir() / name
    root.mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for b, path in binaries.items():
        (bin_dir / b).symlink_to(path)

    ports = {
        n: free_port()
        for n in ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
    }
    server = f"https://127.0.0.1:{ports['kube-apiserver']}"
    pki_dir = root / "pki"
    ca = pki.CertificateAuthority(pki_dir)
    serving = ca.issue(
        "apiserver",
        "kube-apiserver",
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", KUBERNETES_SERVICE_IP),
    )
    sa = pki.service_account_keys(pki_dir)
    admin = ca.issue("admin", "llmops-admin", ("system:masters",))
    kubeconfigs = {
        "admin": (root / "kubeconfig", "llmops-admin", admin),
        "kube-controller-manager": (
            root / "kube-controller-manager.kubeconfig",
            "system:kube-controller-manager",
            ca.issue("kube-controller-manager", "system:kube-controller-manager"),
        ),
        "kube-scheduler": (
            root / "kube-scheduler.kubeconfig",
            "system:kube-scheduler",
            ca.issue("kube-scheduler", "system:kube-scheduler"),
        ),
        # The operator under test has its own identity, so the audit log can tell its requests
        # apart (system:masters until the Helm chart's RBAC takes over).
        "operator": (
            root / "operator.kubeconfig",
            OPERATOR_USER,
            ca.issue("operator", OPERATOR_USER, ("system:masters",)),
        ),
        # kwok acts as every node's kubelet; the admin group keeps its setup to one certificate.
        "kwok": (root / "kwok.kubeconfig", "kwok", ca.issue("kwok", "kwok", ("system:masters",))),
    }
    for path, user, pair in kubeconfigs.values():
        _kubeconfig(path, server, ca.pair.cert, user, pair)

    state = ClusterState(
        name=name,
        root=str(root),
        kubeconfig=str(root / "kubeconfig"),
        server=server,
        server_version=versions["kubernetes"]["version"],
        bin_dir=str(bin_dir),
        ports=ports,
        owner_pid=owner_pid,
    )
    _save_state(state)
    launcher = _Launcher(state, die_with_parent)
    try:
        _start_all(
            launcher,
            binaries,
            ports,
            pki_dir,
            ca.pair,
            serving,
            sa,
            kubeconfigs,
            admin,
            timeout,
            controller_manager_args,
        )
        _bootstrap(state, ca.pair.cert, admin, nodes if nodes is not None else default_nodes(), timeout)
    except BaseException:
        down(name)
        raise
    state.started_seconds = round(time.monotonic() - started, 2)
    _save_state(state)
    return state


def _start_all(
    launcher: _Launcher,
    binaries: dict[str, Path],
    ports: dict[str, int],
    pki_dir: Path,
    ca: pki.CertPair,
    serving: pki.CertPair,
    sa: pki.CertPair,
    kubeconfigs: dict[str, tuple[Path, str, pki.CertPair]],
    admin: pki.CertPair,
    timeout: float,
    controller_manager_args: tuple[str, ...] = (),
) -> None:
    root = launcher.state.root_path
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
    launcher.start(
        "etcd",
        [
            str(binaries["etcd"]),
            "--name=llmops",
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=llmops={peer_url}",
            "--unsafe-no-fsync",  # a throw-away dev cluster: durability buys nothing here
            "--log-level=warn",
        ],
    )
    wait_until(
        "etcd",
        lambda: launcher.alive("etcd") and _get(f"{etcd_url}/health")[0] == 200,
        timeout,
        lambda: launcher.log_tail("etcd"),
    )

    server = launcher.state.server
    audit_policy = root / "audit-policy.yaml"
    audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    launcher.start(
        "kube-apiserver",
        [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--cert-dir={pki_dir}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={ca.cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={server}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={root / 'audit.log'}",
            "--audit-log-mode=blocking",  # a record is on disk before the response is sent
        ],
    )
    admin_ctx = _tls_context(ca.cert, admin)
    wait_until(
        "kube-apiserver /readyz",
        lambda: launcher.alive("kube-apiserver") and _get(f"{server}/readyz", admin_ctx)[0] == 200,
        timeout,
        lambda: launcher.log_tail("kube-apiserver"),
    )

    kcm_config = kubeconfigs["kube-controller-manager"][0]
    launcher.start(
        "kube-controller-manager",
        [
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kube-controller-manager']}",
            "--leader-elect=false",
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={ca.cert}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={ca.cert}",
            f"--cluster-signing-key-file={ca.key}",
            "--cluster-name=llmops-local",
            "--profiling=false",
            # client-go's default client-side limit (20 requests/s) makes a burst of Deployments
            # wait on the controller-manager rather than on the API server: a local cluster has
            # one client of each kind, so let them go as fast as the API server answers.
            *CLIENT_RATE_LIMITS,
            *controller_manager_args,
        ],
    )
    sched_config = kubeconfigs["kube-scheduler"][0]
    launcher.start(
        "kube-scheduler",
        [
            str(binaries["kube-scheduler"]),
            f"--kubeconfig={sched_config}",
            f"--authentication-kubeconfig={sched_config}",
            f"--authorization-kubeconfig={sched_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kube-scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
            *CLIENT_RATE_LIMITS,
        ],
    )
    launcher.start(
        "kwok",
        [
            str(binaries["kwok"]),
            f"--kubeconfig={kubeconfigs['kwok'][0]}",
            f"--config={binaries['kwok'].parent / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
    )
    for component in ("kube-controller-manager", "kube-scheduler"):
        port = ports[component]
        wait_until(
            f"{component} /healthz",
            lambda c=component, p=port: (
                launcher.alive(c)  # type: ignore[misc]
                and _get(f"https://127.0.0.1:{p}/healthz", _insecure())[0] == 200
            ),
            timeout,
            lambda c=component: launcher.log_tail(c),  # type: ignore[misc]
        )
    launcher.alive("kwok")


def start_process(state: ClusterState, name: str, args: list[str], env: dict[str, str] | None = None) -> int:
    """Start a process that belongs to the cluster (e.g. the operator in the quickstart): its
    pid is recorded in the cluster's state, so ``down`` stops it with everything else."""
    launcher = _Launcher(state, die_with_parent=False)
    launcher.start(name, args, env)
    return state.pids[name]


def stop_process(state: ClusterState, name: str, sig: signal.Signals = signal.SIGTERM, grace: float = 20.0) -> None:
    """Stop one process of the cluster (with its process group), e.g. the API server or etcd for
    a fault test; ``start_again`` brings it back with the same command line, ports and files."""
    pid = state.pids.get(name)
    if pid is None:
        raise ClusterError(f"cluster {state.name!r} has no process {name!r}")
    _signal_group(pid, sig)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if pid_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        killed = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < killed:
            _reap(pid)
            time.sleep(0.02)
    _reap(pid)
    if pid_alive(pid):
        raise ClusterError(f"{name} (pid {pid}) did not stop")


def start_again(state: ClusterState, name: str, *, die_with_parent: bool | None = None, timeout: float = 120.0) -> int:
    """Start a stopped process of the cluster again, exactly as it was started (same arguments,
    ports, certificates and data directory; its log is appended to), and wait until it serves:
    etcd answers /health, the API server /readyz; the others are only checked to be running.

    ``die_with_parent`` defaults to whether the caller owns the cluster (``running``)."""
    args = state.commands.get(name)
    if not args:
        raise ClusterError(f"cluster {state.name!r} has no recorded command for {name!r}")
    pid = state.pids.get(name)
    if pid is not None and pid_alive(pid):
        raise ClusterError(f"{name} is still running (pid {pid})")
    if die_with_parent is None:
        die_with_parent = state.owner_pid == os.getpid()
    launcher = _Launcher(state, die_with_parent)
    launcher.start(name, args)
    pki_dir = state.root_path / "pki"
    if name == "etcd":
        url = f"http://127.0.0.1:{state.ports['etcd']}/health"
        wait_until(
            "etcd", lambda: launcher.alive(name) and _get(url)[0] == 200, timeout, lambda: launcher.log_tail(name)
        )
    elif name == "kube-apiserver":
        ctx = _tls_context(pki_dir / "ca.crt", pki.CertPair(pki_dir / "admin.crt", pki_dir / "admin.key"))
        wait_until(
            "kube-apiserver /readyz",
            lambda: launcher.alive(name) and _get(f"{state.server}/readyz", ctx)[0] == 200,
            timeout,
            lambda: launcher.log_tail(name),
        )
    else:
        time.sleep(0.5)
        launcher.alive(name)
    return state.pids[name]


def _insecure() -> ssl.SSLContext:
    """The controller-manager and scheduler serve /healthz with a self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def kubectl(state: ClusterState, *args: str, input: str | None = None, check: bool = True) -> str:
    """Run the cluster's own kubectl with its admin kubeconfig; returns stdout."""
    proc = subprocess.run(
        [str(Path(state.bin_dir) / "kubectl"), f"--kubeconfig={state.kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _bootstrap(state: ClusterState, ca: Path, admin: pki.CertPair, nodes: list[dict[str, Any]], timeout: float) -> None:
    """Create the fake nodes; wait until they are Ready and the default namespace is usable."""
    if nodes:
        kubectl(state, "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))

    def nodes_ready() -> bool:
        items = json.loads(kubectl(state, "get", "nodes", "-o", "json"))["items"]
        ready = {
            n["metadata"]["name"]
            for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return ready >= {n["metadata"]["name"] for n in nodes}

    def default_namespace_usable() -> bool:
        # The service-account controller creates "default"; pods cannot be admitted before it.
        sa = kubectl(state, "get", "serviceaccount", "default", "-n", "default", "-o", "name", check=False)
        cm = kubectl(state, "get", "configmap", "kube-root-ca.crt", "-n", "default", "-o", "name", check=False)
        return bool(sa.strip() and cm.strip())

    logs = state.root_path / "logs"
    wait_until("nodes Ready", nodes_ready, timeout, lambda: (logs / "kwok.log").read_text(errors="replace")[-3000:])
    wait_until(
        "default service account",
        default_namespace_usable,
        timeout,
        lambda: (logs / "kube-controller-manager.log").read_text(errors="replace")[-3000:],
    )


def down(name: str = "local", grace: float = 10.0) -> list[str]:
    """Stop every process of a cluster (by pid, with its process group) and remove its directory.

    Returns the names of the processes that were still running.
    """
    state = load_state(name)
    root = runs_dir() / name
    stopped: list[str] = []
    if state is not None:
        # Reverse start order: processes added later (the operator) and clients first, etcd last.
        rank = {n: i for i, n in enumerate(START_ORDER)}
        order = sorted(state.pids, key=lambda n: rank.get(n, len(START_ORDER)), reverse=True)
        for proc_name in order:
            pid = state.pids[proc_name]
            if pid_alive(pid):
                stopped.append(proc_name)
                _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc_name in order:
            pid = state.pids[proc_name]
            while pid_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.05)
            if pid_alive(pid):
                _signal_group(pid, signal.SIGKILL)
                killed = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < killed:  # SIGKILL is not instant
                    _reap(pid)
                    time.sleep(0.02)
            _reap(pid)
    shutil.rmtree(root, ignore_errors=True)
    return stopped


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session made pid the group leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so it does not stay a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def status(name: str = "local") -> dict[str, Any]:
    """Whether each process is running and the API server answers /readyz."""
    state = load_state(name)
    if state is None:
        return {"name": name, "running": False}
    procs = {n: pid_alive(p) for n, p in state.pids.items()}
    ready = False
    with contextlib.suppress(OSError, urllib.error.URLError, ssl.SSLError):
        pki_dir = state.root_path / "pki"
        ctx = _tls_context(pki_dir / "ca.crt", pki.CertPair(pki_dir / "admin.crt", pki_dir / "admin.key"))
        ready = _get(f"{state.server}/readyz", ctx)[0] == 200
    return {
        "name": name,
        "running": all(procs.values()) and bool(procs),
        "apiserverReady": ready,
        "processes": procs,
        "server": state.server,
        "serverVersion": state.server_version,
        "kubeconfig": state.kubeconfig,
        "startedSeconds": state.started_seconds,
    }


def reap_stale() -> list[str]:
    """Take down clusters whose owning test session has died (crash, SIGKILL, CI timeout)."""
    reaped: list[str] = []
    if not runs_dir().exists():
        return reaped
    for path in runs_dir().iterdir():
        state = load_state(path.name)
        if state is None:
            if not path.joinpath("state.json").exists():
                shutil.rmtree(path, ignore_errors=True)
            continue
        owner_gone = state.owner_pid is not None and not pid_alive(state.owner_pid)
        all_dead = bool(state.pids) and not any(pid_alive(p) for p in state.pids.values())
        if owner_gone or all_dead:
            down(state.name)
            reaped.append(state.name)
    return reaped


@contextlib.contextmanager
def running(name: str, **kwargs: Any) -> Iterator[ClusterState]:
    """A cluster for the duration of a ``with`` block (the pytest fixture's building block)."""
    state = up(name, die_with_parent=True, owner_pid=os.getpid(), **kwargs)
    try:
        yield state
    finally:
        down(name)
