"""The Celery side of ``python -m bench flows --celery``: the same shapes in Celery canvas, on the
same functions, in the same run, for comparison.

The seed's funnel is a chord (``chord(group(...))(final)``) of a chain with a group inside, and
the 3-stage plug pipeline is ``chain(s1, s2, s3)`` per input. Celery runs on a throwaway
``redis-server`` (broker and result backend) started on a free port in a temp dir, with a
prefork worker of the same concurrency; everything is stopped by its PID at the end. Needs the
``celery`` and ``redis`` packages and a ``redis-server`` binary; without them the comparison is
skipped (``celery_skipped`` says why); a Celery run that fails part-way reports the parts it
measured and ``celery_failed`` (the exception it ended with). Celery is not a dependency of
ElasticCode.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .calls import percentile

TASKS = textwrap.dedent('''
    """Celery tasks with the bodies of the sample processor's functions."""
    import os
    from celery import Celery

    app = Celery("benchtasks", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, result_expires=3600,
                    broker_connection_retry_on_startup=True)

    @app.task
    def do_something(message, *more):
        return "Do something: " + " ".join(str(part) for part in (message, *more))

    @app.task
    def noop(*args, **kwargs):
        return None
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(runs: int, pipelines: int, workers: int, durable: bool = False) -> dict[str, Any]:
    """Celery's figures; with ``durable``, redis fsyncs every write (``appendfsync always``), the
    closest to ElasticCode's promise (each call fsynced before it is acknowledged)."""
    redis_server = shutil.which("redis-server")
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return {"celery_skipped": f"celery/redis packages not installed ({exc.name})"}
    if redis_server is None:
        return {"celery_skipped": "no redis-server binary"}
    base = Path(tempfile.mkdtemp(prefix="ec-celery-"))
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = worker = None
    log = open(base / "worker.log", "wb")
    try:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        server = subprocess.Popen([redis_server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base),
                                   "--save", "", *persistence], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        (base / "benchtasks.py").write_text(TASKS)
        env = {**os.environ, "BENCH_REDIS": url, "PYTHONPATH": str(base)}
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "benchtasks", "worker", "-c", str(workers),
                                   "--pool", "prefork", "-l", "WARNING", "--without-gossip", "--without-mingle",
                                   "--without-heartbeat"], cwd=base, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        # the client side runs in a process of its own: Celery keeps its connections per process
        out = subprocess.run([sys.executable, "-m", "bench.celery_canvas", str(runs), str(pipelines), str(workers)],
                             env={**env, "PYTHONPATH": os.pathsep.join([str(base), str(Path(__file__).parent.parent)])},
                             capture_output=True, text=True, timeout=3600)
        result: dict[str, Any] = {}
        for line in out.stdout.splitlines():  # one JSON object per part measured
            if line.startswith("{"):
                result.update(json.loads(line))
        if out.returncode != 0:
            result["celery_failed"] = _why(out.stderr)
        if not result:
            return {"celery_skipped": result.get("celery_failed", "the Celery run printed nothing")}
        result["celery_broker"] = "redis, appendfsync always" if durable else "redis, no persistence"
        return {f"{key}_durable" if durable and key != "celery_broker" else key: value
                for key, value in result.items()}
    finally:
        _stop(worker)
        _stop(server)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _why(stderr: str) -> str:
    """The exception a failed Celery run ended with (not the noise of its interpreter's shutdown)."""
    lines = [line for line in stderr.splitlines() if line and not line[0].isspace()
             and ("Error" in line or "Exception" in line) and "sys.meta_path" not in line
             and not line.startswith(("Exception ignored", "During handling"))]
    return lines[-1] if lines else (stderr.strip().splitlines() or ["no output"])[-1]


def _wait_up(tasks: Any) -> None:
    deadline = time.monotonic() + 60
    while True:  # the worker is up once a task round-trips
        try:
            tasks.noop.delay().get(timeout=5)
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise


def _funnel_figures(tasks: Any, runs: int) -> dict[str, Any]:
    """The seed's funnel in canvas (chord of a group whose middle member is a group of a chain)."""
    from celery import chain, chord, group

    d = tasks.do_something.s

    def funnel() -> Any:
        _pipeline = chain(d("One"), d("Two"), group(d("Four"), d("Five")), d("Three"))
        _parallel = group(_pipeline, d("Six"), d("Seven"))
        return chord(group(d("Eight"), _parallel, d("Nine")))(d("Four"))

    for _ in range(20):
        funnel().get(timeout=60, disable_sync_subtasks=False)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        funnel().get(timeout=60, disable_sync_subtasks=False)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"celery_funnel_p50_ms": round(percentile(samples, 0.50), 2),
            "celery_funnel_p99_ms": round(percentile(samples, 0.99), 2)}


def _pipeline_figures(tasks: Any, pipelines: int) -> dict[str, Any]:
    """``pipelines`` chains of three no-op tasks submitted at once, until every one ended."""
    from celery import chain

    n = tasks.noop.s
    results = [chain(n(), n(), n()).apply_async() for _ in range(200)]
    for result in results:
        result.get(timeout=120)
    start = time.perf_counter()
    results = [chain(n(), n(), n()).apply_async() for _ in range(pipelines)]
    for result in results:
        result.get(timeout=600)
    elapsed = time.perf_counter() - start
    return {"celery_pipeline_inputs_per_s": round(pipelines / elapsed, 1),
            "celery_pipeline_calls_per_s": round(3 * pipelines / elapsed, 1)}


def main() -> None:
    """The client side, in its own process (``BENCH_REDIS`` and the tasks module on the path)."""
    import benchtasks  # type: ignore[import-not-found]

    runs, pipelines, workers = (int(arg) for arg in sys.argv[1:4])
    _wait_up(benchtasks)
    print(json.dumps({"celery_workers": workers}), flush=True)
    print(json.dumps(_funnel_figures(benchtasks, runs)), flush=True)  # each part as soon as it is measured
    print(json.dumps(_pipeline_figures(benchtasks, pipelines)), flush=True)
    # the figures are out; Celery's result-backend threads can fail an orderly interpreter
    # shutdown ("sys.meta_path is None"), which would hide them behind a non-zero exit
    os._exit(0)


if __name__ == "__main__":
    main()
