"""Operator scale benchmark: 1,000 EmbeddingServices applied at once on a local control plane
(kwok nodes), for the operator as it is and as it was before the scale work, side by side in one
run, each on a fresh cluster of its own.

For each mode it prints: the time until every object is Ready, API requests per reconcile (the
operator's own counters), the operator's peak RSS (VmHWM) and CPU seconds, and its writes per
minute once everything has converged (from the API server's audit log; the target is 0).

    .venv/bin/python benchmarks/operator_scale.py [--count 1000] [--idle-seconds 60] [--modes llmops,before]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llmops_dev.cluster import controlplane
from llmops_dev.cluster.nodes import node
from llmops_dev.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "scale"
# Each mode: (operator arguments, the git revision whose operator source runs, or None for this
# tree). "llmops" is the operator as shipped; "before" is the operator as it was before the scale
# work (4 workers, the objects gauge recounted after every reconcile, an Event for every new
# object's first Ready=False, Python's default garbage-collector thresholds), run from that
# commit's own source; "workers-4" is today's operator with the old concurrency.
BEFORE_REV = "553fa88"
MODES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "before": ((), BEFORE_REV),
    "workers-4": (("--workers=4",), None),
    "llmops": ((), None),
}


def operator_source(rev: str | None) -> dict[str, str]:
    """The environment that runs the operator of ``rev`` (its source, exported from git, first
    on PYTHONPATH); empty for this tree."""
    if rev is None:
        return {}
    target = Path(tempfile.mkdtemp(prefix=f"llmops-operator-{rev}-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "operator/llmops_operator"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return {"PYTHONPATH": str(target / "operator")}


def emb(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "llmops.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
            "replicas": 1,
            # Small requests, so that a thousand pods fit on the fake node.
            "resources": {"cpu": "10m", "memory": "32Mi"},
        },
    }


def proc_status(pid: int, field: str) -> int:
    """A kB figure from /proc/<pid>/status (VmHWM: peak resident set)."""
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summed(metrics: dict[str, float], prefix: str, **labels: str) -> float:
    return sum(
        v for k, v in metrics.items() if k.startswith(prefix) and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())
    )


def ready_in_api(state: controlplane.ClusterState) -> int:
    out = controlplane.kubectl(
        state,
        "get",
        "emb",
        "-n",
        NAMESPACE,
        "-o",
        'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
    )
    return sum(1 for line in out.splitlines() if line.strip() == "True")


def established(state: controlplane.ClusterState) -> bool:
    """Every llmops CRD has Established=True (``kubectl wait`` fails on a CRD without status yet)."""
    out = controlplane.kubectl(
        state,
        "get",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=llmops",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=='Established')].status} {end}",
    )
    pairs = out.split()
    return bool(pairs) and all(p.endswith("=True") for p in pairs)


def run_mode(
    label: str, args: tuple[str, ...], rev: str | None, count: int, idle: float, timeout: float
) -> dict[str, Any]:
    nodes = [node("llmops-cpu-0", cpu="1000", memory="4Ti", pods=count + 100)]
    with controlplane.running(f"bench-scale-{label}-{os.getpid()}", nodes=nodes) as state:
        controlplane.kubectl(state, "apply", "--server-side", "-f", str(REPO / "crds"))
        controlplane.wait_until("the CRDs Established", lambda: established(state), 60)
        controlplane.kubectl(state, "create", "namespace", NAMESPACE)
        op = OperatorProcess(
            state, Path(tempfile.mkdtemp(prefix=f"scale-{label}-")), extra_args=args, extra_env=operator_source(rev)
        )
        op.start()
        assert op.proc is not None
        pid = op.proc.pid
        try:
            base = op.metrics()
            cpu_before = cpu_seconds(pid)
            # Where the time goes: the control plane's own CPU during the burst.
            plane_before = {n: cpu_seconds(p) for n, p in state.pids.items()}
            items = [emb(f"e{i:04d}") for i in range(count)]
            chunks = [items[i::8] for i in range(8)]  # 8 clients at once
            started = time.monotonic()

            def apply(chunk: list[dict[str, Any]]) -> None:
                doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": chunk})
                controlplane.kubectl(state, "apply", "--server-side", "-f", "-", input=doc)

            with ThreadPoolExecutor(len(chunks)) as pool:
                list(pool.map(apply, chunks))
            applied_s = time.monotonic() - started
            # The operator's own gauge is cheap to poll; the API server confirms at the end.
            all_ready_s = float("nan")
            while time.monotonic() - started < timeout:
                ready = summed(op.metrics(), "llmops_operator_objects{", kind="EmbeddingService", ready="True")
                if ready >= count and ready_in_api(state) >= count:
                    all_ready_s = time.monotonic() - started
                    break
                time.sleep(0.5)
            ready_api = ready_in_api(state)
            # Converged: the queue is empty and no reconcile has run for 5 s.
            quiet_since, last = time.monotonic(), -1.0
            while time.monotonic() - quiet_since < 5 and time.monotonic() - started < timeout + 120:
                m = op.metrics()
                reconciles_now = summed(m, "llmops_operator_reconciles_total{")
                if reconciles_now != last or summed(m, "llmops_operator_workqueue_depth") > 0:
                    quiet_since, last = time.monotonic(), reconciles_now
                time.sleep(1)
            converged_s = time.monotonic() - started
            settled = op.metrics()
            reconciles = summed(settled, "llmops_operator_reconciles_total{") - summed(
                base, "llmops_operator_reconciles_total{"
            )
            requests = summed(settled, "llmops_operator_api_requests_total{") - summed(
                base, "llmops_operator_api_requests_total{"
            )
            burst_cpu = cpu_seconds(pid) - cpu_before
            plane_cpu = {n: cpu_seconds(p) - plane_before[n] for n, p in state.pids.items() if n in plane_before}
            idle_since = time.time()
            time.sleep(idle)
            idle_writes = len(op.writes(since=idle_since))
            return {
                "mode": label,
                "objects": count,
                "ready": ready_api,
                "applied_s": applied_s,
                "all_ready_s": all_ready_s,
                "converged_s": converged_s,
                "reconciles": reconciles,
                "api_requests": requests,
                "requests_per_reconcile": requests / reconciles if reconciles else float("nan"),
                "requests_per_object": requests / count,
                "operator_cpu_s": burst_cpu,
                **{f"{n}_cpu_s": v for n, v in plane_cpu.items()},
                "peak_rss_mb": proc_status(pid, "VmHWM") / 1024,
                "idle_writes_per_min": idle_writes * 60 / idle,
            }
        finally:
            op.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--timeout", type=float, default=600, help="give up waiting for Ready after this long")
    parser.add_argument("--modes", default="before,llmops", help=f"comma-separated, from {', '.join(MODES)}")
    args = parser.parse_args()
    rows = []
    for label in args.modes.split(","):
        row = run_mode(label, *MODES[label], args.count, args.idle_seconds, args.timeout)
        print(json.dumps(row), flush=True)
        rows.append(row)
    # Side by side: one line per figure, one column per mode.
    print("\n| figure | " + " | ".join(str(r["mode"]) for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in rows[0]:
        if key == "mode":
            continue
        cells = [r.get(key, "") for r in rows]
        print(f"| {key} | " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    print(
        "\ntargets: all Ready <= 60 s, idle writes/min = 0, peak RSS <= 250 MB "
        f"(machine: {os.cpu_count()} cores, shared)"
    )


if __name__ == "__main__":
    main()
