"""The local control plane: build (Go module proxy), PKI, processes, fake nodes."""

from .controlplane import ClusterError, ClusterState, down, kubectl, reap_stale, running, status, up

__all__ = ["ClusterError", "ClusterState", "down", "kubectl", "reap_stale", "running", "status", "up"]
