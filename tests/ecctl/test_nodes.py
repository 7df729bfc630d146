"""``ecctl ls nodes`` and ``ecctl node drain|undrain`` (issue #4) against a real ecd.

The table's rendering of every field is checked on the pure row function; the commands are
checked end to end. NOTE: the daemon side of ``node_drain``/``node_undrain`` is being written
at the same time; until it exists the daemon refuses the op (404 "unknown admin op"), which
these tests accept as well as the final 404 for an unknown node.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from ecctl import CallTimeout, Client, EcctlError
from ecctl.cli import NODE_HEADERS, node_row
from ecctl.output import fmt_percent, table
from tests.conftest import EcdProcess, register_sample, run_ecctl, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def named_node(ecd_factory: Callable[..., EcdProcess]) -> EcdProcess:
    return ecd_factory("n1", extra=("--name", "n1"))


def test_fmt_percent() -> None:
    assert [fmt_percent(v) for v in (12.4, 55.5, 0, 100.0, "7", None, "x", True, float("nan"))] == \
        ["12%", "56%", "0%", "100%", "7%", "-", "-", "-", "-"]


def test_node_row_full_and_from_an_older_daemon() -> None:
    full = {"name": "n2", "state": "draining", "cpus": 8, "busy": 3, "depth": 12, "load": 12.4,
            "memory": 55.0, "disk": 7.6, "endpoint": "tcp://h:7800", "version": "0.2",
            "last_seen": 1.0, "node_id": "u"}
    old = {"name": "n3", "cpus": 2, "endpoint": "", "version": "", "last_seen": 0}
    lines = table(NODE_HEADERS, [node_row(full), node_row(old)]).splitlines()
    assert lines[0].split() == ["Name", "State", "CPUs", "Busy", "Depth", "Load", "Mem", "Disk",
                                "Endpoint"]
    assert lines[2].split() == ["n2", "draining", "8", "3", "12", "12%", "55%", "8%", "tcp://h:7800"]
    assert lines[3].split() == ["n3", "-", "2", "-", "-", "-", "-", "-", "-"]


def test_ls_nodes_table_and_json(named_node: EcdProcess) -> None:
    result = run_ecctl(named_node.endpoint, "ls", "nodes")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == NODE_HEADERS
    assert any(line.split()[0] == "n1" for line in lines[2:])
    result = run_ecctl(named_node.endpoint, "ls", "node", "--json")
    assert result.returncode == 0, result.stderr.decode()
    nodes = json.loads(result.stdout)
    assert isinstance(nodes, list) and "n1" in {n["name"] for n in nodes}


@pytest.mark.parametrize("command", ["drain", "undrain"])
def test_node_drain_unknown_node_fails(named_node: EcdProcess, command: str) -> None:
    """The command reaches the daemon, which refuses: exit 1 and one `error:` line naming the
    node (once the daemon has the op) or the op (until then)."""
    result = run_ecctl(named_node.endpoint, "node", command, "nosuchnode")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "nosuchnode" in stderr or f"node_{command}" in stderr, stderr
    assert result.stdout == b""


def test_node_drain_usage() -> None:
    result = run_ecctl("ipc:///nonexistent/x.sock", "node", "drain")
    assert result.returncode == 2 and b"NAME" in result.stderr
    result = run_ecctl("ipc:///nonexistent/x.sock", "node", "drain", "n1", "--wait", "--timeout", "0")
    assert result.returncode == 2 and b"--timeout" in result.stderr


def test_wait_drained_deadline_and_unknown_node(named_node: EcdProcess) -> None:
    """Nothing drains n1 here: the wait ends at its deadline, naming the node and its state."""
    with Client(named_node.endpoint) as client:
        with pytest.raises(CallTimeout) as info:
            client.wait_drained("n1", timeout=0.5, interval=0.1)
        assert str(info.value).startswith("node n1 not drained after 0.5s (state: ")
        with pytest.raises(EcctlError) as unknown:
            client.wait_drained("nosuchnode", timeout=5)
        assert str(unknown.value) == "unknown node 'nosuchnode'"


def test_drain_wait_then_undrain(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    """A node with a running call is draining until the call ends; `--wait` returns once it is
    drained; `undrain` puts it back to work."""
    node = ecd_factory("n1", extra=("--name", "n1"))
    with Client(node.endpoint) as client:
        register_sample(client, sample_repo, concurrency=1)
        handle = client.call("sample.tasks.sleep", 2)
        wait_for(lambda: handle.state == "running", 30, what="the call to run")
        result = run_ecctl(node.endpoint, "node", "drain", "n1", "--wait", "--timeout", "60")
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().splitlines() == [
            "node n1: draining (its queued calls move to peers; running calls finish)",
            "node n1: drained"]
        assert handle.get(timeout=5) == 2
        assert [n["state"] for n in client.ls("nodes") if n["name"] == "n1"] == ["drained"]
        result = run_ecctl(node.endpoint, "node", "undrain", "n1", "--json")
        assert result.returncode == 0, result.stderr.decode()
        assert json.loads(result.stdout)["name"] == "n1"
        assert [n["state"] for n in client.ls("nodes") if n["name"] == "n1"] == ["alive"]
        assert client.call("sample.tasks.add_two", 1, 2).get(timeout=30) == 3
