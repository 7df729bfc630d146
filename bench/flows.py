"""``python -m bench flows``: data flows through one throwaway node.

(a) the seed's funnel workflow end to end (``funnel([...])(do_something("Four")).get()``, 12
steps in pipelines and parallels), sequential runs: latency p50/p99; (b) a 3-stage plug
pipeline (``s1 -> s2 -> s3``, each a no-op) fed with N calls at once: steady-state throughput
in calls per second through all three stages (every stage's call durable, made in the same
commit as its upstream's result). With ``--celery`` and Celery + a ``redis-server`` on the
machine, the same shapes in Celery canvas (chord/chain/group; chain of three) on the same
functions, in the same run (``bench/celery_canvas.py``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .calls import percentile
from .harness import ThrowawayNode, print_result


def seed_funnel(function: Any) -> Any:
    """The seed's example, as written (names aside)."""
    from ecctl import funnel, parallel, pipeline

    do_something = function.p
    _pipeline = pipeline([do_something("One"), do_something("Two"),
                          parallel([do_something("Four"), do_something("Five")]), do_something("Three")])
    _parallel = parallel([_pipeline, do_something("Six"), do_something("Seven")])
    return funnel([do_something("Eight"), _parallel, do_something("Nine")])


def run(runs: int, pipeline_calls: int, cpus: int, workers: int) -> dict[str, Any]:
    from ecctl import Client, Function

    with ThrowawayNode(cpus=cpus) as node:
        with Client(node.endpoint) as admin:
            admin.add_queue("bench", "direct")
            admin.add_processor("flows", node.repo_url, "sample.tasks", concurrency=workers)
            admin.add_socket("bench.do_something", processor="flows", function="do_something", queue="bench")
            for stage in ("s1", "s2", "s3"):
                admin.add_socket(f"bench.{stage}", processor="flows", function="noop", queue="bench")
            admin.add("plug", name="s1-s2", source="bench.s1", target="bench.s2", queue="bench")
            admin.add("plug", name="s2-s3", source="bench.s2", target="bench.s3", queue="bench")
        node.wait_running("flows")
        client = Client(node.endpoint, timeout=60)
        flow = seed_funnel(Function("bench.do_something", client=client))
        final = Function("bench.do_something", client=client).p("Four")
        for _ in range(20):  # warm up
            flow(final).get(timeout=60)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            flow(final).get(timeout=60)
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()
        s1 = Function("bench.s1", client=client)
        s1.map([()] * 500, timeout=300)
        _settled(client)
        start = time.perf_counter()
        s1.map([()] * pipeline_calls, timeout=600)
        _settled(client)
        elapsed = time.perf_counter() - start
        status = client.status()
        client.close()
    return {
        "bench": "flows",
        "funnel_runs": runs,
        "funnel_steps": 12,
        "funnel_p50_ms": round(percentile(samples, 0.50), 2),
        "funnel_p99_ms": round(percentile(samples, 0.99), 2),
        "pipeline_inputs": pipeline_calls,
        "pipeline_seconds": round(elapsed, 3),
        "pipeline_inputs_per_s": round(pipeline_calls / elapsed, 1),
        "pipeline_calls_per_s": round(3 * pipeline_calls / elapsed, 1),
        "plug_calls": status["dataflow"]["plug_calls"],
        "wal_commits": status["wal"]["commits"],
        "cpus": cpus,
        "workers": workers,
    }


def _settled(client: Any, timeout: float = 600) -> None:
    """Until the node holds no unfinished call (every stage of every pipeline ended)."""
    deadline = time.monotonic() + timeout
    while client.status()["calls"]["active"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the pipeline did not drain")
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench flows", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--runs", type=int, default=200, help="sequential funnel workflows")
    parser.add_argument("--pipelines", type=int, default=5000, help="inputs of the 3-stage plug pipeline")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--celery", action="store_true", help="also run the Celery canvas equivalents")
    args = parser.parse_args(argv)
    result = run(args.runs, args.pipelines, args.cpus, args.workers)
    if args.celery:
        from . import celery_canvas

        result.update(celery_canvas.run(args.runs, args.pipelines, args.workers))
        durable = celery_canvas.run(args.runs, args.pipelines, args.workers, durable=True)
        durable.pop("celery_broker", None)
        result.update(durable)
    print_result(result, args.json)
    return 0
