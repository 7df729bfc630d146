"""End to end on the embedded SQLite store: processor control (pause, resume, stop, start,
restart, remove), rolling updates, deployments, call history across restarts, and
``ecctl apply``/``export`` against a real daemon with real workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ecctl import Client
from tests.conftest import EcdProcess, git, processor_view, register_sample, run_ecctl, wait_for


def ecctl_ok(node: EcdProcess, *args: str, input: bytes | None = None) -> str:
    proc = run_ecctl(node.endpoint, *args, input=input)
    assert proc.returncode == 0, f"ecctl {' '.join(args)} failed:\n{proc.stderr.decode()}"
    return proc.stdout.decode()


def states(client: Client, ids: list[str]) -> list[str]:
    return [client.admin("ls_call", id=call_id)["state"] for call_id in ids]


@pytest.fixture
def sample(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> tuple[EcdProcess, Client]:
    node = ecd_factory()
    client = Client(node.endpoint)
    register_sample(client, sample_repo, concurrency=2, retries=0)
    yield node, client
    client.close()


class TestProcessorControl:
    def test_pause_queues_calls_until_resume(self, sample: tuple[EcdProcess, Client]) -> None:
        node, client = sample
        ecctl_ok(node, "proc", "pause", "-n", "proc1")
        assert processor_view(client, "proc1")["status"] == "paused"
        handles = [client.submit("sample.tasks.echo", [i]) for i in range(5)]
        # accepted and durable, but none runs while paused: the workers stay up, idle
        view = processor_view(client, "proc1")
        assert view["workers"] == 2 and view["busy"] == 0
        assert set(states(client, [h.id for h in handles])) == {"queued"}
        ecctl_ok(node, "proc", "resume", "-n", "proc1")
        assert [h.get(30)["args"] for h in handles] == [[i] for i in range(5)]

    def test_stop_brings_workers_down_and_start_brings_them_back(self, sample: tuple[EcdProcess, Client]) -> None:
        node, client = sample
        ecctl_ok(node, "proc", "stop", "-n", "proc1")
        wait_for(lambda: processor_view(client, "proc1")["workers"] == 0, 30, what="workers stopped")
        assert processor_view(client, "proc1")["status"] == "stopped"
        handle = client.submit("sample.tasks.echo", ["later"])
        assert states(client, [handle.id]) == ["queued"]
        ecctl_ok(node, "proc", "start", "-n", "proc1")
        assert handle.get(120)["args"] == ["later"]
        assert processor_view(client, "proc1")["workers"] == 2

    def test_restart_rolls_workers_without_failing_a_call(self, sample: tuple[EcdProcess, Client]) -> None:
        node, client = sample
        before = set(processor_view(client, "proc1")["pids"])
        running = client.submit("sample.tasks.sleep", [1.0])
        wait_for(lambda: states(client, [running.id]) == ["running"], 30, what="call running")
        ecctl_ok(node, "proc", "restart", "-n", "proc1")
        running.get(60)  # raises if the call failed
        assert states(client, [running.id]) == ["done"]
        wait_for(lambda: (v := processor_view(client, "proc1"))["idle"] == 2 and not set(v["pids"]) & before,
                 60, what="every worker replaced")

    def test_remove_deletes_the_processor_and_its_sockets(self, sample: tuple[EcdProcess, Client]) -> None:
        node, client = sample
        out = ecctl_ok(node, "--json", "proc", "remove", "-n", "proc1")
        removed = json.loads(out)
        assert removed["processor"] == "proc1" and "sample.tasks.echo" in removed["sockets"]
        assert [p["name"] for p in client.admin("ls_processors")] == []
        assert client.admin("ls_sockets") == []
        proc = run_ecctl(node.endpoint, "run", "sample.tasks.echo", "x")
        assert proc.returncode != 0 and b"unknown socket" in proc.stderr

    def test_remove_is_refused_while_calls_are_unfinished(self, sample: tuple[EcdProcess, Client]) -> None:
        node, client = sample
        ecctl_ok(node, "proc", "pause", "-n", "proc1")
        client.submit("sample.tasks.echo", [1])
        proc = run_ecctl(node.endpoint, "proc", "remove", "-n", "proc1")
        assert proc.returncode == 1 and b"unfinished call" in proc.stderr
        assert [p["name"] for p in client.admin("ls_processors")] == ["proc1"]


def test_new_commit_rolls_workers_without_losing_or_failing_queued_calls(
        ecd_factory: Callable[..., EcdProcess], tmp_path: Path) -> None:
    from tests.conftest import EXAMPLE, make_git_repo

    repo_dir = tmp_path / "repo"
    url = make_git_repo(EXAMPLE, repo_dir)
    first = git(repo_dir, "rev-parse", "HEAD")
    tasks = repo_dir / "sample" / "tasks.py"
    tasks.write_text(tasks.read_text() + "\n\ndef version():\n    return 2\n")
    git(repo_dir, "commit", "-q", "-am", "v2")
    second = git(repo_dir, "rev-parse", "HEAD")
    node = ecd_factory()
    with Client(node.endpoint) as client:
        register_sample(client, url, concurrency=2, retries=0, commit=first)
        client.admin("add_socket", name="version", processor="proc1", function="version", queue="q1")
        backlog = [client.submit("sample.tasks.sleep", [0.05]) for _ in range(40)]
        client.admin("update_processor", name="proc1", commit=second)
        for handle in backlog:
            handle.get(120)
        assert set(states(client, [h.id for h in backlog])) == {"done"}
        wait_for(lambda: processor_view(client, "proc1").get("resolved_commit") == second, 120, what="new commit")
        assert client.submit("version", []).get(60) == 2


def test_deployments_place_a_processor_on_named_nodes(sample: tuple[EcdProcess, Client]) -> None:
    node, client = sample
    client.admin("add_node", name="elsewhere")
    client.admin("add_deployment", name="d1", processor="proc1", node="elsewhere", cpus=1)
    view = wait_for(lambda: (v := processor_view(client, "proc1"))["workers"] == 0 and v, 30, what="workers gone")
    assert view["status"] == "stopped" and "elsewhere" in view["reason"]
    handle = client.submit("sample.tasks.echo", ["waits"])
    assert states(client, [handle.id]) == ["queued"]  # durable, waiting for a node that hosts it
    here = client.status()["node"]
    client.admin("add_deployment", name="d2", processor="proc1", node=here, cpus=1)
    assert handle.get(120)["args"] == ["waits"]
    assert processor_view(client, "proc1")["workers"] == 1  # the deployment's CPUs, not concurrency


def test_call_history_pages_across_restarts(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory()
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo)
        ids = [client.submit("sample.tasks.echo", [i]).id for i in range(7)]
        failing = client.submit("sample.tasks.fail", ["x"])
        with pytest.raises(Exception):
            failing.get(60)
    assert node.terminate() == 0
    node.start()
    out = ecctl_ok(node, "ls", "calls", "-p", "1", "-r", "3")
    assert "Page 1 of 3" in out
    data = json.loads(ecctl_ok(node, "--json", "ls", "calls", "-r", "100", "--socket", "sample.tasks.echo"))
    assert data["source"] == "history"
    assert sorted(c["id"] for c in data["calls"]) == sorted(ids)
    assert {c["state"] for c in data["calls"]} == {"done"}
    failed = json.loads(ecctl_ok(node, "--json", "ls", "calls", "--socket", "sample.tasks.fail"))
    assert [c["state"] for c in failed["calls"]] == ["failed"]


def test_apply_is_idempotent_and_export_round_trips(ecd_factory: Callable[..., EcdProcess], sample_repo: str,
                                                    tmp_path: Path) -> None:
    node = ecd_factory()
    network = tmp_path / "network.yaml"
    network.write_text(f"""
queues:
  - name: q1
processors:
  - name: proc1
    gitrepo: {sample_repo}
    module: sample.tasks
    concurrency: 2
sockets:
  - name: echo
    processor: proc1
    function: echo
    queue: q1
  - name: add_two
    processor: proc1
    function: add_two
    queue: q1
flows:
  - name: demo
    processors: [proc1]
""")
    dry = ecctl_ok(node, "apply", "-f", str(network), "--dry-run")
    assert "dry run" in dry and "+ processor proc1" in dry
    with Client(node.endpoint) as client:
        assert client.admin("ls_processors") == []  # a dry run writes nothing
    first = ecctl_ok(node, "apply", "-f", str(network))
    assert "applied" in first
    assert "no changes" in ecctl_ok(node, "apply", "-f", str(network))
    with Client(node.endpoint) as client:
        assert client.submit("add_two", [2, 3]).get(180) == 5
    exported = ecctl_ok(node, "export")
    assert "no changes" in ecctl_ok(node, "apply", "-f", "-", input=exported.encode())
    network.write_text(network.read_text().replace("concurrency: 2", "concurrency: 1"))
    changed = ecctl_ok(node, "apply", "-f", str(network))
    assert "concurrency" in changed and "2 -> 1" in changed
    with Client(node.endpoint) as client:
        wait_for(lambda: processor_view(client, "proc1")["workers"] == 1, 30, what="scaled down")


def test_bad_network_file_is_refused_whole(node: EcdProcess, tmp_path: Path) -> None:
    network = tmp_path / "bad.yaml"
    network.write_text("queues:\n  - name: ok1\nsockets:\n  - name: s1\n    processor: nope\n    function: f\n    queue: ok1\n")
    proc = run_ecctl(node.endpoint, "apply", "-f", str(network))
    assert proc.returncode == 1 and b"nope" in proc.stderr
    with Client(node.endpoint) as client:
        assert client.admin("ls_queues") == []  # one transaction: nothing of it was applied


def _status(node: EcdProcess) -> dict[str, Any]:
    with Client(node.endpoint) as client:
        return client.status()


def test_status_reports_topology_sync_and_history(node: EcdProcess) -> None:
    status = _status(node)
    assert status["topology"]["backend"] == "sqlite" and status["topology"]["push"] == "poll"
    assert status["topology"]["store"] == "ok"
    assert status["history"]["enabled"] is True


def test_history_retention_bounds_the_history(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    node = ecd_factory(extra=("--history-retention", "3"))
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo, concurrency=1)
        ids = [client.submit("sample.tasks.echo", [i]).id for i in range(3)]
        for call_id in ids:
            client.result(call_id, timeout=60)
        assert client.admin("ls_calls", rows=10)["total"] == 3  # exported (read-your-writes)
        # finished calls leave the history once older than the retention (the log keeps results)
        wait_for(lambda: client.admin("ls_calls", rows=10)["total"] == 0, 30, what="history pruned")
        assert client.status()["history"]["retention"] == 3.0


def test_calls_queued_on_a_socket_deleted_elsewhere_fail_clearly(postgres: Any, ecd_factory: Callable[..., EcdProcess],
                                                                 sample_repo: str) -> None:
    """Node a holds queued calls of a socket that node b deletes: a's calls fail with a clear
    error (durably), instead of waiting forever for a socket that is gone."""
    from ecctl import RemoteError

    url = postgres.new_database()
    a = ecd_factory("a", extra=("--db", url, "--name", "a"))
    b = ecd_factory("b", extra=("--db", url, "--name", "b"))
    with Client(a.endpoint) as client_a, Client(b.endpoint) as client_b:
        register_sample(client_a, sample_repo, concurrency=1)
        client_a.admin("proc_pause", name="proc1")
        handle = client_a.submit("sample.tasks.echo", ["orphan"])
        client_b.admin("delete_socket", name="sample.tasks.echo")  # b has no unfinished call on it
        with pytest.raises(RemoteError, match="SocketRemoved"):
            handle.get(60)
        assert client_a.admin("ls_call", id=handle.id)["state"] == "failed"
    assert a.terminate() == 0
    a.start()
    with Client(a.endpoint) as client_a:
        assert client_a.admin("ls_call", id=handle.id)["state"] == "failed"  # not requeued at start


def test_new_code_that_cannot_be_prepared_leaves_the_old_workers_serving(sample: tuple[EcdProcess, Client]) -> None:
    node, client = sample
    before = processor_view(client, "proc1")
    client.admin("update_processor", name="proc1", commit="0123456789abcdef")  # no such commit
    view = wait_for(lambda: "new code not ready" in (v := processor_view(client, "proc1"))["reason"] and v,
                    120, what="the failed preparation reported")
    assert view["status"] == "running" and view["resolved_commit"] == before["resolved_commit"]
    assert set(view["pids"]) == set(before["pids"])
    assert client.submit("sample.tasks.add_two", [1, 1]).get(60) == 2


def test_rate_limit_spaces_call_starts(sample: tuple[EcdProcess, Client]) -> None:
    node, client = sample
    client.admin("update_processor", name="proc1", rate_limit="5/s")
    handles = [client.submit("sample.tasks.noop", []) for _ in range(6)]
    for handle in handles:
        handle.get(60)
    starts = sorted(client.admin("ls_call", id=h.id)["started"] for h in handles)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # 5 per second: starts at least 0.2 s apart (a little slack for clock reads), on 2 idle workers
    assert min(gaps) >= 0.18, gaps
