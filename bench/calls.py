"""``python -m bench calls``: no-op call latency and throughput through one throwaway node.

(a) sequential round trips of ``ecctl.Function(...)(...).get()`` (durable accept + result),
p50/p99; (b) throughput of N calls with a bounded window in flight on one connection
(``Function.map``). Both in the default durable mode (every call fsynced before its ACCEPTED).

Transport: the node's local ipc socket by default; ``--curve`` goes over tcp with CURVE, a login
and authorization on (the caller is a user whose only right is RUN_TASK, through a role);
``--insecure`` over plain tcp to a node run with ``--insecure`` (the same run without security).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from typing import Any

from .harness import ThrowawayNode, print_result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Transports of the bench: the node's ipc socket, tcp with CURVE and a login, plain tcp.
TRANSPORTS = ("ipc", "curve", "insecure")


def run(latency_calls: int, throughput_calls: int, window: int, cpus: int, workers: int,
        env: dict[str, str] | None = None, transport: str = "ipc") -> dict[str, Any]:
    from ecctl import Client, Function

    tcp = f"tcp://127.0.0.1:{_free_port()}"
    extra = {"ipc": (), "curve": ("--listen", tcp), "insecure": ("--listen", tcp, "--insecure")}[transport]
    with ThrowawayNode(cpus=cpus, env=env, extra=extra) as node:
        with Client(node.endpoint) as admin:
            admin.add_queue("bench", "direct")
            admin.add_processor("noop", node.repo_url, "sample.tasks", concurrency=workers)
            admin.add_socket("bench.noop", processor="noop", function="noop", queue="bench")
            if transport == "curve":
                admin.add_user("bench", "bench-password")
                admin.add_role("runner")
                admin.add_privilege("RUN_TASK", role="runner")
                admin.update_user("bench", add_roles=["runner"])
        node.wait_running("noop")
        caller = _caller(node, transport, tcp)
        noop = Function("bench.noop", client=caller)
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
        "transport": transport,
    }


def _caller(node: ThrowawayNode, transport: str, tcp: str) -> Any:
    """The benchmark's client: over the node's ipc socket, or over tcp (CURVE: the node's key
    trusted and the bench user logged in, in a config folder of the run's own)."""
    from ecctl import Client
    from ecctl.trust import KnownNodes
    from ecd.keys import load

    if transport == "ipc":
        return Client(node.endpoint, timeout=30)
    if transport == "insecure":
        return Client(tcp, timeout=30, insecure=True)
    folder = node.base / "client-config"
    KnownNodes(folder).trust(tcp, load(node.data_dir).public_text)
    client = Client(tcp, timeout=30, config_dir=folder, user="bench", password="bench-password")
    client.login()
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench calls", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--latency-calls", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=20_000, help="calls in the throughput run")
    parser.add_argument("--window", type=int, default=1024, help="calls in flight in the throughput run")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--curve", action="store_const", const="curve", dest="transport",
                      help="over tcp with CURVE, a login and authorization (a user with RUN_TASK only)")
    mode.add_argument("--insecure", action="store_const", const="insecure", dest="transport",
                      help="over plain tcp to a node run with --insecure")
    args = parser.parse_args(argv)
    result = run(args.latency_calls, args.calls, args.window, args.cpus, args.workers,
                 transport=args.transport or "ipc")
    print_result(result, args.json)
    return 0
