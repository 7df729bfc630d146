"""``python -m bench mesh``: what replication costs in a three-node mesh, and how soon a killed
node's calls run elsewhere.

Three throwaway ecds on this machine (``tcp://127.0.0.1-3``, free ports, one shared SQLite
topology file, heartbeat 0.5 s: a node is dead after 5 missed beats), the example processor
registered once through node 1 and running on every node.

1. Replication cost: a fresh mesh per setting, ``--replicas 1`` and ``--replicas 2`` alternated
   over ``--rounds`` (the machine is noisy): p50/p95 of sequential ``call(...).get()`` round
   trips against node 1, and the throughput of ``--calls`` no-op calls submitted to node 1 with
   ``Client.map`` (batched, a bounded window in flight). Medians, and the ratio R=2 / R=1
   (target: R=2 costs at most 2x the latency of R=1).
2. Takeover: a fresh mesh with R=2 per round; a backlog of short ``sleep`` calls is submitted to
   node 2 through its own endpoint only; once some have finished node 2 gets SIGKILL. Through
   nodes 1 and 3 every call id is waited for (none may be lost), and each call's record
   (``ls_call``) gives when it finished: the time from the kill to the first completion after it
   (all of them need a takeover, node 2 being gone), median over ``--takeover-rounds``
   (target: within 3 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .calls import percentile
from .harness import ThrowawayNode

#: Heartbeat interval of the bench meshes, seconds (dead after 5 missed beats).
HEARTBEAT = 0.5
#: Seconds a stopping node gives its running calls (SIGTERM at the end of each mesh).
GRACE = 5.0
#: Targets from the issue.
TARGET_LATENCY_RATIO = 2.0
TARGET_TAKEOVER_S = 3.0
PROCESSOR = "bench-sample"
NOOP = "sample.tasks.noop"
SLEEP = "sample.tasks.sleep"


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class MeshNode(ThrowawayNode):
    """A :class:`ThrowawayNode` that can be killed outright (its workers die with it:
    ``PR_SET_PDEATHSIG``; any left over are killed through the node's worker registry)."""

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.kill_orphans()

    def terminate(self) -> None:
        """SIGTERM without waiting (``__exit__`` waits), so several nodes stop at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def kill_orphans(self) -> None:
        registry = self.data_dir / "workers.json"
        if registry.exists():
            from ecd.workers import ProcessRegistry

            ProcessRegistry(registry).kill_orphans()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            with contextlib.suppress(Exception):
                self.kill_orphans()


class Mesh:
    """``with Mesh(replicas=2, ...) as mesh:`` three nodes in one mesh with the example processor
    running on each; every node is stopped by its PID and every temp dir removed on exit."""

    def __init__(self, replicas: int, repo_url: str, venv_dir: Path, n: int = 3, cpus: int = 2,
                 workers: int = 2) -> None:
        self.replicas = replicas
        self.repo_url = repo_url
        self.venv_dir = venv_dir
        self.n = n
        self.cpus = cpus
        self.workers = workers
        self.base: Path | None = None
        self.nodes: list[MeshNode] = []
        self.tcp: list[str] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Mesh":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="ec-bench-mesh-"))
        db = f"sqlite:///{self.base / 'topology.db'}"
        self.tcp = [f"tcp://127.0.0.{i + 1}:{free_port_on(f'127.0.0.{i + 1}')}" for i in range(self.n)]
        for i in range(self.n):
            join = self.tcp[0] if i else ",".join(self.tcp[1:])
            extra = ("--name", f"n{i + 1}", "--listen", self.tcp[i], "--join", join, "--db", db,
                     "--replicas", str(self.replicas), "--heartbeat", str(HEARTBEAT), "--grace", str(GRACE))
            node = MeshNode(cpus=self.cpus, venv_dir=self.venv_dir, extra=extra, repo_url=self.repo_url)
            self._stack.push(node.__exit__)  # cleaned up even if it fails to start
            self.nodes.append(node.__enter__())
        self._wait(self._formed, 60, "mesh formed")
        with self.client(0, timeout=60) as admin:
            admin.add_queue("bench", "direct")
            admin.add_processor(PROCESSOR, self.repo_url, "sample.tasks", concurrency=self.workers)
            for socket_name, function in ((NOOP, "noop"), (SLEEP, "sleep")):
                admin.add_socket(socket_name, processor=PROCESSOR, function=function, queue="bench")
        for i in range(self.n):
            self._wait(lambda i=i: self._serving(i), 300, f"{PROCESSOR} running on n{i + 1}")

    def client(self, *indexes: int, **kwargs: Any) -> Any:
        """A client of these nodes' tcp endpoints (several: it fails over between them), over
        CURVE: the nodes' keys trusted (in a config folder of the run's own) and logged in as the
        admin the first start made."""
        from ecctl import Client
        from ecctl.trust import KnownNodes
        from ecd.keys import load

        assert self.base is not None
        folder = self.base / "client-config"
        known = KnownNodes(folder)
        for endpoint, node in zip(self.tcp, self.nodes):
            if known.get(endpoint) is None:
                known.trust(endpoint, load(node.data_dir).public_text)
        password = next((node.data_dir / "admin.password").read_text().strip() for node in self.nodes
                        if (node.data_dir / "admin.password").exists())
        return Client(",".join(self.tcp[i] for i in indexes), config_dir=folder, user="admin", password=password,
                      **kwargs)

    def status(self, i: int) -> dict[str, Any]:
        with self.client(i, timeout=10, connect_timeout=10) as client:
            return client.status()

    def _formed(self) -> bool:
        for i in range(self.n):
            status = self.status(i)
            states = [m["state"] for m in status["mesh"]["nodes"]]
            if len(states) != self.n - 1 or set(states) != {"alive"}:
                return False
        return True

    def _serving(self, i: int) -> bool:
        status = self.status(i)
        for proc in status["processors"]:
            if proc["name"] == PROCESSOR and proc["status"] == "failed":
                raise RuntimeError(f"{PROCESSOR} failed on n{i + 1}: {proc.get('reason')}")
        running = any(p["name"] == PROCESSOR and p["status"] == "running" and p["idle"] >= self.workers
                      for p in status["processors"])
        return running and {NOOP, SLEEP} <= {s["name"] for s in status["sockets"]}

    @staticmethod
    def _wait(predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            for node in self.nodes:
                node.terminate()  # all at once; each node's __exit__ then waits for its PID
            self._stack.close()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)


# -- 1. replication cost -----------------------------------------------------------------------

def replication_run(replicas: int, repo_url: str, venv_dir: Path, latency_calls: int,
                    throughput_calls: int, window: int) -> dict[str, Any]:
    """One fresh mesh with ``--replicas replicas``: latency and throughput against node 1."""
    with Mesh(replicas, repo_url, venv_dir) as mesh, mesh.client(0, timeout=60) as client:
        for _ in range(100):  # warm up: workers, connections, page cache
            client.call(NOOP).get(timeout=30)
        client.map(NOOP, [()] * 500, window=window, timeout=300)
        samples = []
        for _ in range(latency_calls):
            start = time.perf_counter()
            client.call(NOOP).get(timeout=30)
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()
        start = time.perf_counter()
        results = client.map(NOOP, [()] * throughput_calls, window=window, timeout=600)
        elapsed = time.perf_counter() - start
        if len(results) != throughput_calls or any(r is not None for r in results):
            raise RuntimeError("the throughput run returned wrong results")
        replication = mesh.status(0)["replication"]
    if replication["replicas"] != replicas:
        raise RuntimeError(f"node 1 reports replicas={replication['replicas']}, expected {replicas}")
    return {"p50_ms": percentile(samples, 0.50), "p95_ms": percentile(samples, 0.95),
            "calls_per_s": throughput_calls / elapsed}


# -- 2. takeover ---------------------------------------------------------------------------------

def _record(clients: list[Any], call_id: str) -> dict[str, Any] | None:
    """The freshest copy of a call's record among the surviving nodes."""
    best = None
    for client in clients:
        try:
            record = client.ls_call(call_id)
        except Exception:  # noqa: BLE001 - not held there
            continue
        if best is None or (record.get("finished") is not None, record.get("finished") or 0) > \
                (best.get("finished") is not None, best.get("finished") or 0):
            best = record
    return best


def takeover_run(repo_url: str, venv_dir: Path, backlog: int, seconds: float, done_before_kill: int) -> dict[str, Any]:
    """One fresh R=2 mesh: a backlog at node 2, node 2 killed, the rest waited for via 1 and 3."""
    with Mesh(2, repo_url, venv_dir) as mesh:
        with mesh.client(1, timeout=60) as n2:
            ids = [n2.call(SLEEP, seconds).id for _ in range(backlog)]
            for call_id in ids[:done_before_kill]:  # some have finished (they run roughly in order)
                n2.result(call_id, timeout=60)
        killed_at = time.time()
        mesh.nodes[1].kill9()
        results: dict[str, Any] = {}
        with mesh.client(0, 2, timeout=120) as survivors:
            for call_id in ids:
                try:
                    results[call_id] = survivors.result(call_id, timeout=120)
                except Exception:  # noqa: BLE001 - counted as lost
                    pass
        with mesh.client(0, timeout=30) as n1, mesh.client(2, timeout=30) as n3:
            records = {call_id: _record([n1, n3], call_id) for call_id in ids}
        taken_over = sum(mesh.status(i)["replication"]["taken_over"] for i in (0, 2))
    finished = [r["finished"] for r in records.values() if r and r.get("finished")]
    after = [f - killed_at for f in finished if f > killed_at]
    takeovers = [e["time"] - killed_at for r in records.values() if r for e in r["events"]
                 if str(e.get("note", "")).startswith("Taken over")]
    return {
        "submitted": len(ids),
        "completed": sum(1 for cid in ids if results.get(cid) == seconds),
        "lost": [cid for cid in ids if results.get(cid) != seconds],
        "finished_after_kill": len(after),
        "kill_to_takeover_s": min(takeovers) if takeovers else None,
        "kill_to_first_completion_s": min(after) if after else None,
        "kill_to_last_completion_s": max(after) if after else None,
        "taken_over": taken_over,
    }


# -- the bench -----------------------------------------------------------------------------------

def _median(values: list[float | None], digits: int) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run(rounds: int, latency_calls: int, throughput_calls: int, window: int, takeover_rounds: int,
        backlog: int, seconds: float, done_before_kill: int) -> dict[str, Any]:
    started = time.monotonic()
    shared = ThrowawayNode()  # never started: its temp dir holds what every mesh shares
    try:
        # one repository and one virtualenv cache for every mesh (the venv is built once)
        repo_url = shared._make_repo()
        venv_dir = shared.base / "venvs"
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for _ in range(rounds):
            for replicas in (1, 2):
                runs[replicas].append(replication_run(replicas, repo_url, venv_dir, latency_calls,
                                                      throughput_calls, window))
        takeovers = [takeover_run(repo_url, venv_dir, backlog, seconds, done_before_kill)
                     for _ in range(takeover_rounds)]
    finally:
        shutil.rmtree(shared.base, ignore_errors=True)
    result: dict[str, Any] = {"bench": "mesh", "nodes": 3, "heartbeat_s": HEARTBEAT, "rounds": rounds,
                              "latency_calls": latency_calls, "throughput_calls": throughput_calls,
                              "throughput_window": window}
    for replicas, samples in runs.items():
        result[f"r{replicas}_latency_p50_ms"] = _median([s["p50_ms"] for s in samples], 3)
        result[f"r{replicas}_latency_p95_ms"] = _median([s["p95_ms"] for s in samples], 3)
        result[f"r{replicas}_calls_per_s"] = _median([s["calls_per_s"] for s in samples], 1)
        result[f"r{replicas}_latency_p50_runs_ms"] = [round(s["p50_ms"], 3) for s in samples]
        result[f"r{replicas}_calls_per_s_runs"] = [round(s["calls_per_s"], 1) for s in samples]
    result["latency_p50_ratio"] = _ratio(result["r2_latency_p50_ms"], result["r1_latency_p50_ms"])
    result["latency_p95_ratio"] = _ratio(result["r2_latency_p95_ms"], result["r1_latency_p95_ms"])
    result["throughput_ratio"] = _ratio(result["r2_calls_per_s"], result["r1_calls_per_s"])
    result["latency_target_met"] = (None if result["latency_p50_ratio"] is None
                                    else result["latency_p50_ratio"] <= TARGET_LATENCY_RATIO)
    result.update({
        "takeover_rounds": takeover_rounds, "takeover_backlog": backlog, "takeover_sleep_s": seconds,
        "takeover_first_completion_s": _median([t["kill_to_first_completion_s"] for t in takeovers], 3),
        "takeover_detect_s": _median([t["kill_to_takeover_s"] for t in takeovers], 3),
        "takeover_last_completion_s": _median([t["kill_to_last_completion_s"] for t in takeovers], 3),
        "takeover_first_completion_runs_s": [None if t["kill_to_first_completion_s"] is None
                                             else round(t["kill_to_first_completion_s"], 3) for t in takeovers],
        "takeover_finished_after_kill_runs": [t["finished_after_kill"] for t in takeovers],
        "takeover_submitted": sum(t["submitted"] for t in takeovers),
        "takeover_completed": sum(t["completed"] for t in takeovers),
        "takeover_lost": [cid for t in takeovers for cid in t["lost"]],
    })
    first = result["takeover_first_completion_s"]
    result["takeover_target_met"] = None if first is None else first <= TARGET_TAKEOVER_S
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def print_table(result: dict[str, Any]) -> None:
    r = result
    print(f"mesh of 3 nodes, heartbeat {r['heartbeat_s']} s; medians of {r['rounds']} alternated rounds")
    if r["rounds"]:
        rows = [("latency p50 ms", "latency_p50_ms", "latency_p50_ratio"),
                ("latency p95 ms", "latency_p95_ms", "latency_p95_ratio"),
                (f"throughput calls/s ({r['throughput_calls']})", "calls_per_s", "throughput_ratio")]
        print(f"  {'':<28}{'R=1':>10}{'R=2':>10}{'R=2/R=1':>10}")
        for label, key, ratio in rows:
            print(f"  {label:<28}{_fmt(r[f'r1_{key}']):>10}{_fmt(r[f'r2_{key}']):>10}{_fmt(r[ratio]):>10}")
        print(f"  runs p50 ms     R=1 {r['r1_latency_p50_runs_ms']}  R=2 {r['r2_latency_p50_runs_ms']}")
        print(f"  runs calls/s    R=1 {r['r1_calls_per_s_runs']}  R=2 {r['r2_calls_per_s_runs']}")
        print(f"  target: R=2 p50 latency <= {TARGET_LATENCY_RATIO}x R=1: "
              f"{'met' if r['latency_target_met'] else 'NOT met'}")
    if r["takeover_rounds"]:
        print(f"takeover (R=2, {r['takeover_backlog']} x sleep {r['takeover_sleep_s']} s at n2, n2 SIGKILLed), "
              f"medians of {r['takeover_rounds']} rounds")
        print(f"  kill -> taken over (detected)     {_fmt(r['takeover_detect_s'])} s")
        print(f"  kill -> first completion          {_fmt(r['takeover_first_completion_s'])} s"
              f"   runs {r['takeover_first_completion_runs_s']}")
        print(f"  kill -> last completion           {_fmt(r['takeover_last_completion_s'])} s")
        print(f"  calls finished after the kill     {r['takeover_finished_after_kill_runs']}")
        print(f"  completed / submitted             {r['takeover_completed']} / {r['takeover_submitted']}"
              f"   lost {len(r['takeover_lost'])}")
        print(f"  target: first completion within {TARGET_TAKEOVER_S} s: "
              f"{'met' if r['takeover_target_met'] else 'NOT met'}")
    print(f"elapsed {r['elapsed_s']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench mesh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3, help="alternated R=1 / R=2 meshes (0: skip)")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--calls", type=int, default=5000, help="calls in each throughput run")
    parser.add_argument("--window", type=int, default=1024, help="calls in flight in the throughput run")
    parser.add_argument("--takeover-rounds", type=int, default=3, help="meshes whose node 2 is killed (0: skip)")
    parser.add_argument("--backlog", type=int, default=200, help="calls submitted to node 2 before the kill")
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each backlog call sleeps")
    parser.add_argument("--done-before-kill", type=int, default=5,
                        help="first backlog calls that must have finished before the kill")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.latency_calls, args.calls, args.window, args.takeover_rounds,
                 args.backlog, args.sleep, args.done_before_kill)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0
