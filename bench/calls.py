"""``python -m bench calls``: no-op call latency and throughput through one throwaway node.

(a) sequential round trips of ``ecctl.Function(...)(...).get()`` (durable accept + result),
p50/p99; (b) throughput of N calls with a bounded window in flight on one connection
(``Function.map``). Both in the default durable mode (every call fsynced before its ACCEPTED).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from .harness import ThrowawayNode, print_result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run(latency_calls: int, throughput_calls: int, window: int, cpus: int, workers: int,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    from ecctl import Client, Function

    with ThrowawayNode(cpus=cpus, env=env) as node:
        with Client(node.endpoint) as admin:
            admin.add_queue("bench", "direct")
            admin.add_processor("noop", node.repo_url, "sample.tasks", concurrency=workers)
            admin.add_socket("bench.noop", processor="noop", function="noop", queue="bench")
        node.wait_running("noop")
        noop = Function("bench.noop", client=Client(node.endpoint, timeout=30))
        for _ in range(200):  # warm up: workers, sockets, page cache
            noop().get(timeout=30)
        samples = []
        for _ in range(latency_calls):
            start = time.perf_counter()
            noop().get(timeout=30)
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()
        noop.map([()] * 1000, window=window, timeout=300)
        start = time.perf_counter()
        results = noop.map([()] * throughput_calls, window=window, timeout=600)
        elapsed = time.perf_counter() - start
        assert len(results) == throughput_calls and all(r is None for r in results)
        with Client(node.endpoint) as admin:
            wal = admin.status()["wal"]
        noop.client.close()
    return {
        "bench": "calls",
        "latency_calls": latency_calls,
        "latency_p50_ms": round(percentile(samples, 0.50), 3),
        "latency_p99_ms": round(percentile(samples, 0.99), 3),
        "latency_mean_ms": round(statistics.fmean(samples), 3),
        "throughput_calls": throughput_calls,
        "throughput_window": window,
        "throughput_seconds": round(elapsed, 3),
        "throughput_calls_per_s": round(throughput_calls / elapsed, 1),
        "cpus": cpus,
        "workers": workers,
        "wal_commits": wal.get("commits"),
        "wal_records": wal.get("records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench calls", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--latency-calls", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=20_000, help="calls in the throughput run")
    parser.add_argument("--window", type=int, default=1024, help="calls in flight in the throughput run")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    result = run(args.latency_calls, args.calls, args.window, args.cpus, args.workers)
    print_result(result, args.json)
    return 0
