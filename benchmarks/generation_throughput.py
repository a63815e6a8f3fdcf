"""Generation server throughput and latency, side by side in one run on one machine and one model
(the tiny random-weight Llama of ``llmops_dev.tiny_lm``: greedy decoding never emits EOS, so every
request generates exactly ``max_new_tokens``):

(a) continuous batching as shipped (``batching.maxBatchSize: 16``);
(b) no batching (``batching.maxBatchSize: 1``): one sequence at a time, the naive baseline;
(c) static batching is not measured: the engine has no setting for it. It falls back to static
    batching only for models whose KV-cache layers are not plain keys and values (sliding-window
    or recurrent layers), which it detects from the model itself (``Engine.continuous``), so it
    cannot be forced on the same model by configuration.

For each configuration a server is started (``model.cpuThreads: 1``, ``limits.maxConcurrentRequests``
well above the load so that nothing is refused), warmed up, measured, then stopped:

1. Throughput: ``--clients`` concurrent connections (wrk, closed loop, ``benchmarks/wrk_post.lua``)
   each sending ``POST /generate`` with ``max_new_tokens`` 64 and a SciFact claim as prompt.
   Requests/s is wrk's; tokens/s is requests/s x 64. That every request generates exactly 64
   tokens is checked on the warm-up requests (``details.generated_tokens``), and the server's own
   count (``llmops_generation_generated_tokens_total`` over the run) is shown next to it.
2. Latency per request p50/p95: wrk's latency distribution (completed requests). Time to first
   token p50: sequential ``POST /generate_stream`` requests (closed after their first event), sent
   while the wrk load runs (an extra client; probes that end after the load are dropped), and the
   same on the idle server before the load.
3. Each configuration is measured ``--repeats`` times, the configurations interleaved (a, b, a,
   b, ...) so that a change in the machine's load hits both alike; the table shows the median of
   the repeats of each figure, and the ratio continuous batching / no batching.

In a closed loop the first ``--clients`` requests of a run wait less than the steady state
(without batching a request waits for every other client's): keep ``--seconds`` well above the
no-batching p50 latency for steady-state figures. With the defaults a run takes about 4 minutes
(six server starts, each ~10 s of start-up, warm-up and idle probes, plus 30 s of load).

    .venv/bin/python benchmarks/generation_throughput.py [--clients 16] [--seconds 30] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from llmops_dev.services import ServerProcess
from llmops_dev.tiny_lm import build_tiny_lm

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMOPS_SHARED_DIR", REPO.parent / "shared")) / "data" / "scifact"
WRK_SCRIPT = REPO / "benchmarks" / "wrk_post.lua"
MODEL_NAME = "llmops/tiny-llama"
# name -> (label, batching section of the server config)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "continuous": ("continuous batching (maxBatchSize 16)", {"maxBatchSize": 16}),
    "no_batching": ("no batching (maxBatchSize 1)", {"maxBatchSize": 1}),
}
STATIC_SKIPPED = "no config switch: the engine batches statically only for models with non-plain KV caches"
# Figures of one run; the table shows the median of each over the repeats.
FIGURES = ("rps", "tokens_per_s", "server_tokens_per_s", "p50_ms", "p95_ms", "ttft_load_p50_ms", "ttft_idle_p50_ms")


def claims() -> list[str]:
    lines = (DATA / "queries.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def server_config(model_path: str, batching: dict[str, Any], clients: int) -> dict[str, Any]:
    return {
        "model": {"name": MODEL_NAME, "path": model_path, "cpuThreads": 1},
        # wrk's clients, the TTFT probe and the warm-up, with room to spare: nothing may get a 429.
        "limits": {"maxConcurrentRequests": max(128, 4 * clients)},
        "batching": batching,
        "logLevel": "WARNING",
    }


def wrk(url: str, bodies_file: Path, seconds: int, clients: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "300s", "-s", str(WRK_SCRIPT), url]
    env = {**os.environ, "BODIES_FILE": str(bodies_file)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def generated_tokens(url: str, prompts: list[str], max_new_tokens: int) -> list[int]:
    """Send the prompts concurrently to ``/generate`` with details; each one's generated token count."""

    def one(prompt: str) -> int:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
        r = httpx.post(url + "/generate", json=body, timeout=600)
        r.raise_for_status()
        return int(r.json()["details"]["generated_tokens"])

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


def first_token_ms(client: httpx.Client, prompt: str, max_new_tokens: int) -> float:
    """Milliseconds from sending a streamed request to its first token event (then it is closed)."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}
    started = time.perf_counter()
    with client.stream("POST", "/generate_stream", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if "token" not in event:
                    raise RuntimeError(f"unexpected first event: {line}")
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("the stream ended without a token")


class TtftProbe(threading.Thread):
    """Sequential streamed requests between ``start_at`` and ``deadline`` (monotonic); the time to
    first token of those whose first token came before the deadline."""

    def __init__(self, url: str, prompts: list[str], max_new_tokens: int, start_at: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url, self.prompts, self.max_new_tokens = url, prompts, max_new_tokens
        self.start_at, self.deadline = start_at, deadline
        self.values: list[float] = []
        self.dropped = 0
        self.error: Exception | None = None

    def run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        try:
            with httpx.Client(base_url=self.url, timeout=600) as client:
                for prompt in self.prompts:
                    if time.monotonic() >= self.deadline:
                        return
                    ms = first_token_ms(client, prompt, self.max_new_tokens)
                    if time.monotonic() <= self.deadline:
                        self.values.append(ms)
                    else:
                        self.dropped += 1  # its wait overlapped the end of the load
        except Exception as exc:  # reported by the main thread
            self.error = exc


def wait_idle(server: ServerProcess, timeout: float = 300) -> None:
    """Until no sequence is queued or generating (warm-up requests cut off by a client are gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.metric("llmops_generation_queue_depth") + server.metric("llmops_generation_running") == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("the server did not become idle")


def measure(
    name: str, model_path: str, prompts: list[str], bodies_file: Path, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Start one configuration's server, warm it up, measure it once, stop it."""
    _, batching = CONFIGS[name]
    server = ServerProcess("llmops_workloads.generation", server_config(model_path, batching, args.clients), workdir)
    server.start(timeout=300)
    try:
        info = server.get_json("/info")
        # Warm-up (every batch shape up to the clients' count) and the check that each request
        # generates exactly max_new_tokens, which tokens/s = requests/s x max_new_tokens assumes.
        counts = generated_tokens(server.url, prompts[: min(args.clients, 8)], args.max_new_tokens)
        wait_idle(server)
        with httpx.Client(base_url=server.url, timeout=600) as client:
            idle = [first_token_ms(client, p, args.max_new_tokens) for p in prompts[8 : 8 + args.ttft_requests]]

        tokens_before = server.metric("llmops_generation_generated_tokens_total")
        launched = time.monotonic()
        probe = TtftProbe(
            server.url,
            prompts[100 : 100 + args.ttft_requests],
            args.max_new_tokens,
            start_at=launched + min(2.0, args.seconds * 0.2),  # the clients' requests are in by then
            deadline=launched + args.seconds,
        )
        probe.start()
        res = wrk(server.url + "/generate", bodies_file, args.seconds, args.clients)
        probe.join()
        tokens_after = server.metric("llmops_generation_generated_tokens_total")
        if probe.error is not None:
            raise RuntimeError(f"TTFT probe failed: {probe.error!r}")
    finally:
        server.stop()
    return {
        "rps": res["rps"],
        "tokens_per_s": res["rps"] * args.max_new_tokens,
        # Every token the server generated during the run (requests cut at its end, probes included).
        "server_tokens_per_s": (tokens_after - tokens_before) / res["seconds"],
        "p50_ms": res["p50_ms"],
        "p95_ms": res["p95_ms"],
        "p99_ms": res["p99_ms"],
        "ttft_load_p50_ms": statistics.median(probe.values) if probe.values else None,
        "ttft_load_samples": len(probe.values),
        "ttft_load_dropped": probe.dropped,
        "ttft_idle_p50_ms": statistics.median(idle) if idle else None,
        "requests": res["requests"],
        "non_2xx": res["s429"] + res["s4xx"] + res["s5xx"],
        "status_429": res["s429"],
        "socket_errors": res["socket_errors"],
        "checked_generated_tokens": counts,
        "continuous": info.get("batching", {}).get("continuous"),
        "max_batch_size": info.get("max_batch_size"),
        "device": info.get("model_device_type"),
        "dtype": info.get("model_dtype"),
        "wrk": res,
    }


def machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu_model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent wrk connections")
    parser.add_argument("--seconds", type=int, default=30, help="wrk duration of each measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ttft-requests", type=int, default=5, help="streamed requests for time to first token")
    parser.add_argument("--model-dir", help="a local model directory instead of the tiny random-weight Llama")
    parser.add_argument("--json", type=Path, help="write every figure (each repeat's too) here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prompts = claims()
    results: dict[str, Any] = {
        "machine": machine(),
        "clients": args.clients,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "prompts": f"SciFact claims ({len(prompts)}, {DATA / 'queries.jsonl'})",
        "static_batching": {"skipped": STATIC_SKIPPED},
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="llmops-gen-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_path = args.model_dir or str(build_tiny_lm(tmp / "tiny-lm"))
        results["model"] = MODEL_NAME if args.model_dir is None else args.model_dir
        bodies_file = tmp / "bodies.jsonl"
        bodies = [json.dumps({"inputs": p, "parameters": {"max_new_tokens": args.max_new_tokens}}) for p in prompts]
        bodies_file.write_text("\n".join(bodies) + "\n")
        for repeat in range(args.repeats):
            for name in CONFIGS:
                run = measure(name, model_path, prompts, bodies_file, args, tmp / f"{name}-{repeat}")
                runs[name].append(run)
                shown = {k: run[k] for k in (*FIGURES, "non_2xx", "socket_errors", "ttft_load_samples")}
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {json.dumps(shown)}", flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    for name, (label, batching) in CONFIGS.items():
        checked = [n for r in runs[name] for n in r["checked_generated_tokens"]]
        results[name] = {
            "label": label,
            "batching": batching,
            "median": {key: median_of(runs[name], key) for key in FIGURES},
            "non_2xx_total": sum(r["non_2xx"] for r in runs[name]),
            "socket_errors_total": sum(r["socket_errors"] for r in runs[name]),
            "ttft_load_samples_total": sum(r["ttft_load_samples"] for r in runs[name]),
            "continuous": runs[name][0]["continuous"],
            "device": runs[name][0]["device"],
            "dtype": runs[name][0]["dtype"],
            "generated_tokens_checked": len(checked),
            "generated_tokens_all_equal_max_new_tokens": all(n == args.max_new_tokens for n in checked),
            "runs": runs[name],
        }
    a, b = results["continuous"]["median"], results["no_batching"]["median"]
    results["ratio_continuous_over_no_batching"] = {
        key: (a[key] / b[key] if a[key] is not None and b[key] else None) for key in FIGURES
    }
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\njson: {args.json}")


def _cell(value: float | None, width: int, fmt: str) -> str:
    return f"{value:{width}{fmt}}" if value is not None else f"{'-':>{width}}"


def report(r: dict[str, Any]) -> None:
    m, cont = r["machine"], r["continuous"]
    print(
        f"\nmachine: {m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, device {cont['device']} ({cont['dtype']}), "
        "server torch threads 1"
    )
    start, end = m["load_average_at_start"], m["load_average_at_end"]
    print(f"load average (1 min) at start {start[0]:.2f}, at end {end[0]:.2f}")
    print(
        f"model {r['model']}; {r['clients']} clients (wrk) x POST /generate, max_new_tokens {r['max_new_tokens']}, "
        f"SciFact claims; {r['seconds']} s per measurement, median of {r['repeats']} repeat(s)"
    )
    header = (
        f"\n{'configuration':<40} {'req/s':>7} {'tok/s':>8} {'server tok/s':>12} {'p50 ms':>8} {'p95 ms':>8}"
        f" {'TTFT load':>10} {'TTFT idle':>10} {'non-2xx':>8} {'sock err':>8}"
    )
    print(header)
    for name in CONFIGS:
        c = r[name]
        med = c["median"]
        print(
            f"{c['label']:<40} {_cell(med['rps'], 7, '.2f')} {_cell(med['tokens_per_s'], 8, '.1f')}"
            f" {_cell(med['server_tokens_per_s'], 12, '.1f')} {_cell(med['p50_ms'], 8, '.0f')}"
            f" {_cell(med['p95_ms'], 8, '.0f')} {_cell(med['ttft_load_p50_ms'], 10, '.1f')}"
            f" {_cell(med['ttft_idle_p50_ms'], 10, '.1f')} {c['non_2xx_total']:>8} {c['socket_errors_total']:>8}"
        )
    print(f"{'static batching':<40} skipped: {STATIC_SKIPPED}")
    ratio = r["ratio_continuous_over_no_batching"]
    cells = [(6, "rps"), (7, "tokens_per_s"), (11, "server_tokens_per_s"), (7, "p50_ms"), (7, "p95_ms")]
    cells += [(9, "ttft_load_p50_ms"), (9, "ttft_idle_p50_ms")]
    print(f"{'ratio continuous / no batching':<40} " + " ".join(f"{_cell(ratio[k], w, '.2f')}x" for w, k in cells))
    print("\nTTFT: time to first token p50 (ms) of sequential streamed requests under the wrk load, and idle.")
    for name in CONFIGS:
        c = r[name]
        verdict = "all" if c["generated_tokens_all_equal_max_new_tokens"] else "NOT ALL (tok/s is wrong)"
        print(
            f"{c['label']}: /info batching.continuous={c['continuous']}; generated_tokens checked on "
            f"{c['generated_tokens_checked']} requests: {verdict} = {r['max_new_tokens']}; "
            f"TTFT-under-load samples {c['ttft_load_samples_total']}"
        )
        if c["non_2xx_total"] or c["socket_errors_total"]:
            print(f"  WARNING: {c['non_2xx_total']} non-2xx responses, {c['socket_errors_total']} socket errors")


if __name__ == "__main__":
    main()
