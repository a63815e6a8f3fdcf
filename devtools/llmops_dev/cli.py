"""``llmops-dev``: the developer command line.

llmops-dev cluster build          build (or reuse) the control-plane binaries
llmops-dev cluster up [--name N]  start a local control plane; prints how to use it
llmops-dev cluster env            shell exports: eval "$(llmops-dev cluster env)"
llmops-dev cluster status         JSON: processes, readiness, versions
llmops-dev cluster down           stop every process of the cluster and remove its files
llmops-dev quickstart [--down]    the README's main command
llmops-dev tiny-lm DIR [--seed N] build (or reuse) a tiny causal LM for tests and local runs
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from .cluster import build, controlplane


def _print_usage(state: controlplane.ClusterState) -> None:
    env = state.env()
    print(
        f"""
Local Kubernetes {state.server_version} is up in {state.started_seconds:.1f}s: {state.server}
  etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok are running
  (nodes: llmops-cpu-0, and llmops-gpu-0 with 8x nvidia.com/gpu, tainted nvidia.com/gpu=present:NoSchedule).

Use it:
  export KUBECONFIG={shlex.quote(env["KUBECONFIG"])}
  export PATH={shlex.quote(state.bin_dir)}:$PATH      # kubectl, helm, etcdctl, kwok
  kubectl get nodes
Stop it:
  llmops-dev cluster down{"" if state.name == "local" else f" --name {state.name}"}
""".rstrip()
    )


def _cmd_build(_: argparse.Namespace) -> int:
    started = time.monotonic()
    for name, path in build.ensure_binaries().items():
        print(f"{name}\t{path}")
    print(f"binaries ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    state = controlplane.up(args.name)
    _print_usage(state)
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    state = controlplane.load_state(args.name)
    if state is None:
        print(f"cluster {args.name!r} is not running; start it with: llmops-dev cluster up", file=sys.stderr)
        return 1
    env = state.env()
    print(f"export KUBECONFIG={shlex.quote(env['KUBECONFIG'])}")
    print(f'export PATH={shlex.quote(state.bin_dir)}:"$PATH"')
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = controlplane.status(args.name)
    print(json.dumps(info, indent=2))
    return 0 if info.get("running") and info.get("apiserverReady") else 1


def _cmd_down(args: argparse.Namespace) -> int:
    stopped = controlplane.down(args.name)
    print(f"cluster {args.name!r} down; stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    if args.down:
        return _cmd_down(args)
    from . import quickstart

    return quickstart.run(args.name)


def _cmd_tiny_lm(args: argparse.Namespace) -> int:
    from .tiny_lm import build_tiny_lm

    started = time.monotonic()
    path = build_tiny_lm(Path(args.dir), seed=args.seed)
    print(path)
    print(f"tiny LM ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmops-dev", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="the local control plane")
    csub = cluster.add_subparsers(dest="action", required=True)
    for action, func, help_ in (
        ("build", _cmd_build, "build or reuse the binaries"),
        ("up", _cmd_up, "start the control plane"),
        ("env", _cmd_env, "print shell exports for kubectl and helm"),
        ("status", _cmd_status, "print the cluster's state as JSON"),
        ("down", _cmd_down, "stop the control plane and remove its files"),
    ):
        p = csub.add_parser(action, help=help_)
        p.add_argument("--name", default="local", help="cluster name (default: local)")
        p.set_defaults(func=func)

    quick = sub.add_parser("quickstart", help="bring up the local stack and show it working")
    quick.add_argument("--name", default="local")
    quick.add_argument("--down", action="store_true", help="tear everything down")
    quick.set_defaults(func=_cmd_quickstart)

    tiny = sub.add_parser("tiny-lm", help="build (or reuse) a tiny causal LM for the generation server")
    tiny.add_argument("dir", help="output directory (reused when it holds the same build)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny_lm)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except controlplane.ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
