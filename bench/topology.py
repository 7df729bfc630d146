"""``python -m bench topology``: how long a topology change takes to reach a second ecd.

Two throwaway ecds share one topology database: first a throwaway PostgreSQL server (changes
pushed by LISTEN/NOTIFY), then one SQLite file (the change counter polled every
``topology_poll`` seconds, 1 s by default). For each round (started at a random moment, so polls are sampled fairly) a queue is added through node A;
the time runs from sending the request until node B's ``status`` lists the queue. Medians and
the poll/push ratio are reported.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import ThrowawayNode, print_result


def _propagation(db_url: str, rounds: int) -> list[float]:
    from ecctl import Client

    venvs = Path(tempfile.mkdtemp(prefix="ec-bench-venvs-"))
    try:
        with ThrowawayNode(cpus=1, venv_dir=venvs, extra=("--db", db_url, "--name", "a")) as a, \
                ThrowawayNode(cpus=1, venv_dir=venvs, extra=("--db", db_url, "--name", "b")) as b, \
                Client(a.endpoint, timeout=30) as client_a, Client(b.endpoint, timeout=30) as client_b:
            deadline = time.monotonic() + 30
            while client_b.status()["topology"]["push"] == "notify" and not client_b.status()["topology"]["listening"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("node b never started listening")
                time.sleep(0.01)
            samples = []
            for i in range(rounds):
                # start each change at a random point of the poll period, not right after a poll
                time.sleep(random.uniform(0, 1.0))
                name = f"bench-q{i}"
                start = time.perf_counter()
                client_a.admin("add_queue", name=name)
                while name not in {q["name"] for q in client_b.status()["queues"]}:
                    if time.perf_counter() - start > 30:
                        raise RuntimeError(f"{name} did not reach node b within 30 s")
                    time.sleep(0.001)
                samples.append((time.perf_counter() - start) * 1000)
            return samples
    finally:
        shutil.rmtree(venvs, ignore_errors=True)


def run(rounds: int) -> dict[str, Any]:
    from tests.pg import Unavailable, throwaway_server

    result: dict[str, Any] = {"bench": "topology", "rounds": rounds}
    try:
        with throwaway_server() as server:
            push = _propagation(server.new_database(), rounds)
        result["postgres_push_p50_ms"] = round(statistics.median(push), 1)
        result["postgres_push_max_ms"] = round(max(push), 1)
    except Unavailable as exc:
        result["postgres_push_p50_ms"] = None
        result["postgres_skipped"] = str(exc)
    base = Path(tempfile.mkdtemp(prefix="ec-bench-sqlite-"))
    try:
        poll = _propagation(f"sqlite:///{base / 'topology.db'}", rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["sqlite_poll_p50_ms"] = round(statistics.median(poll), 1)
    result["sqlite_poll_max_ms"] = round(max(poll), 1)
    if result["postgres_push_p50_ms"]:
        result["poll_over_push"] = round(result["sqlite_poll_p50_ms"] / result["postgres_push_p50_ms"], 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench topology", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    result = run(args.rounds)
    print_result(result, args.json)
    return 0
