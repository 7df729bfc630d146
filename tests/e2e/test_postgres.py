"""End to end on a real PostgreSQL server: several ecds on one database, change push through
LISTEN/NOTIFY (no full reload), and database loss: calls keep running on the cached topology,
admin requests fail clearly, and everything reconnects by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ecctl import Client, ServerError
from tests.conftest import EcdProcess, processor_view, register_sample, run_ecctl, wait_for


def pg_node(ecd_factory: Callable[..., EcdProcess], url: str, name: str, **kwargs: Any) -> EcdProcess:
    return ecd_factory(name, extra=("--db", url, "--name", name), **kwargs)


def topology_status(node: EcdProcess) -> dict[str, Any]:
    with Client(node.endpoint) as client:
        return client.status()["topology"]


def test_a_change_through_one_ecd_is_pushed_to_another(postgres: Any, ecd_factory: Callable[..., EcdProcess],
                                                        sample_repo: str) -> None:
    url = postgres.new_database()
    a = pg_node(ecd_factory, url, "a")
    b = pg_node(ecd_factory, url, "b")
    before = topology_status(b)
    assert before["push"] == "notify"
    wait_for(lambda: topology_status(b)["listening"], 30, what="b listening")
    with Client(a.endpoint) as client_a:
        register_sample(client_a, sample_repo, concurrency=1)
    with Client(b.endpoint) as client_b:
        # b runs the processor a registered, and serves its sockets
        wait_for(lambda: processor_view(client_b, "proc1").get("status") == "running", 180, what="proc1 on b")
        assert client_b.submit("sample.tasks.add_two", [1, 2]).get(60) == 3
        nodes = {n["name"] for n in client_b.admin("ls_nodes")}
    assert {"a", "b"} <= nodes
    after = topology_status(b)
    assert after["notifications"] > before["notifications"]
    assert after["deltas"] > before["deltas"]
    assert after["full_loads"] == before["full_loads"]  # pushed deltas, never a whole reload


def test_database_loss_keeps_calls_running_and_reconnects(postgres: Any, ecd_factory: Callable[..., EcdProcess],
                                                           sample_repo: str) -> None:
    url = postgres.new_database()
    node = pg_node(ecd_factory, url, "solo")
    client = Client(node.endpoint)
    try:
        register_sample(client, sample_repo, concurrency=2)
        queued = [client.submit("sample.tasks.sleep", [0.2]) for _ in range(6)]
        postgres.stop()
        try:
            # accepted calls keep running, new calls are accepted and run on the cached topology
            during = [client.submit("sample.tasks.echo", [i]) for i in range(10)]
            assert [h.get(60)["args"] for h in during] == [[i] for i in range(10)]
            for handle in queued:
                handle.get(60)
            with pytest.raises(ServerError, match="topology store unavailable"):
                client.admin("add_queue", name="qx")
            proc = run_ecctl(node.endpoint, "ls", "processors")
            assert proc.returncode == 1 and b"topology store unavailable" in proc.stderr
            wait_for(lambda: client.status()["topology"]["store"] == "unavailable", 30, what="store marked down")
        finally:
            postgres.start()
        wait_for(lambda: _admin_works(client), 60, what="admin after the database returned")
        wait_for(lambda: client.status()["topology"]["listening"], 60, what="listener reconnected")
        # the history written while the database was away arrives once it is back
        data = wait_for(lambda: (d := client.admin("ls_calls", rows=100, socket="sample.tasks.echo"))["total"] == 10
                        and d, 60, what="history caught up")
        assert data["source"] == "history"
        assert sorted(c["id"] for c in data["calls"]) == sorted(h.id for h in during)
        # and changes made now still reach the node
        client.admin("add_queue", name="after-outage")
        assert "after-outage" in {q["name"] for q in client.status()["queues"]}
    finally:
        client.close()


def _admin_works(client: Client) -> bool:
    try:
        client.admin("ls_queues")
        return True
    except ServerError:
        return False


def test_ecd_starts_on_its_cached_topology_while_the_database_is_down(
        postgres: Any, ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    url = postgres.new_database()
    node = pg_node(ecd_factory, url, "cached")
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo, concurrency=1)
    assert node.terminate() == 0
    postgres.stop()
    try:
        node.start()
        with Client(node.endpoint) as client:
            assert client.submit("sample.tasks.add_two", [20, 22]).get(180) == 42
            assert client.status()["topology"]["store"] == "unavailable"
    finally:
        postgres.start()
    with Client(node.endpoint) as client:
        wait_for(lambda: _admin_works(client), 60, what="admin after the database returned")
        out = run_ecctl(node.endpoint, "--json", "ls", "calls")
        assert out.returncode == 0 and json.loads(out.stdout)["total"] >= 1


def test_a_database_dropped_and_made_again_is_reloaded_whole(postgres: Any, ecd_factory: Callable[..., EcdProcess]) -> None:
    """Versions only compare within one database: after `ecd db drop` + `init` and a network with
    more changes than the node had seen, the node drops what is gone instead of patching it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    url = postgres.new_database()
    node = pg_node(ecd_factory, url, "epoch")
    with Client(node.endpoint) as client:
        for i in range(3):
            client.admin("add_queue", name=f"old{i}")
        for args in (("drop", "--yes"), ("init",)):
            proc = subprocess.run([sys.executable, "-m", "ecd", "db", *args, "--db", url], cwd=ROOT,
                                  capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()
        wait_for(lambda: _admin_works(client), 60, what="admin on the new database")
        for i in range(6):  # more versions than the node had seen
            client.admin("add_queue", name=f"new{i}")
        names = wait_for(lambda: (n := {q["name"] for q in client.status()["queues"]}) >= {f"new{i}" for i in range(6)}
                         and n, 30, what="the new network")
        assert not {f"old{i}" for i in range(3)} & names
