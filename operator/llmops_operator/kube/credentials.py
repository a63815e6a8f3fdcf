"""Where the operator's credentials come from: a kubeconfig (development, tests) or the pod's
service account (in a cluster). One loader serves both our client and kopf's watches."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    token: str | None = None
    # In a pod the kubelet rotates the projected token file; read it on every request.
    token_path: str | None = None
    insecure: bool = False
    default_namespace: str | None = None

    def bearer_token(self) -> str | None:
        if self.token_path:
            return Path(self.token_path).read_text().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_path and self.key_path:
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def for_kopf(self) -> dict[str, Any]:
        """Keyword arguments for ``kopf.ConnectionInfo``."""
        return {
            "server": self.server,
            "ca_path": self.ca_path,
            "insecure": self.insecure,
            "certificate_path": self.cert_path,
            "private_key_path": self.key_path,
            "token": self.bearer_token(),
            "default_namespace": self.default_namespace,
        }


def _materialise(data: str | None, path: str | None, suffix: str, base: Path) -> str | None:
    """kubeconfigs carry either a path (relative to the file) or inline base64 data."""
    if path:
        p = Path(path)
        return str(p if p.is_absolute() else base / p)
    if data:
        fd, name = tempfile.mkstemp(prefix="llmops-", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        return name
    return None


def from_kubeconfig(path: str | Path, context: str | None = None) -> Credentials:
    path = Path(path).expanduser()
    config = yaml.safe_load(path.read_text()) or {}
    ctx_name = context or config.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts", [])}
    if ctx_name not in contexts:
        raise ValueError(f"kubeconfig {path}: context {ctx_name!r} not found")
    ctx = contexts[ctx_name]
    cluster = {c["name"]: c.get("cluster") or {} for c in config.get("clusters", [])}[ctx["cluster"]]
    user = {u["name"]: u.get("user") or {} for u in config.get("users", [])}[ctx["user"]]
    base = path.parent
    return Credentials(
        server=cluster["server"],
        ca_path=_materialise(
            cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), ".crt", base
        ),
        cert_path=_materialise(user.get("client-certificate-data"), user.get("client-certificate"), ".crt", base),
        key_path=_materialise(user.get("client-key-data"), user.get("client-key"), ".key", base),
        token=user.get("token"),
        token_path=user.get("tokenFile"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        default_namespace=ctx.get("namespace"),
    )


def in_cluster() -> Credentials:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    namespace_file = SA_DIR / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_path=str(SA_DIR / "ca.crt"),
        token_path=str(SA_DIR / "token"),
        default_namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
    )


def load(kubeconfig: str | None = None) -> Credentials:
    """An explicit kubeconfig, else $KUBECONFIG, else the pod's service account, else ~/.kube/config."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return from_kubeconfig(path.split(os.pathsep)[0])
    if "KUBERNETES_SERVICE_HOST" in os.environ and (SA_DIR / "token").exists():
        return in_cluster()
    return from_kubeconfig(Path.home() / ".kube" / "config")
