"""Endpoint failover (issue #4, client side) against real ecd processes.

A client given several endpoints talks to one at a time and moves to the next when one does not
answer (nothing listening, no socket file, the node killed). The daemons here are independent
(no mesh): what is checked is where the client's requests go, not what a mesh does with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
import pytest

from ecctl import Client, NoDaemon, ServerError
from ecctl.client import DEFAULT_ATTEMPT_TIMEOUT, FAILOVER_WAIT_MS
from tests.conftest import EcdProcess, admin_client, free_port, register_sample, run_ecctl

pytestmark = pytest.mark.timeout(240)

#: Longest a request may take to leave a dead endpoint for a live one (one attempt, a pause
#: between rounds, and slack for a loaded test machine).
FAILOVER_BOUND = DEFAULT_ATTEMPT_TIMEOUT + FAILOVER_WAIT_MS / 1000 + 3.0


def _named(ecd_factory: Callable[..., EcdProcess], name: str, **kwargs: object) -> EcdProcess:
    """A node called ``name`` (both daemons run on this host, whose name they would share)."""
    return ecd_factory(name, extra=("--name", name), **kwargs)


def test_dead_tcp_endpoint_first_then_live(sample_node: EcdProcess) -> None:
    """(a) Nothing listens on the first endpoint: PING and a CALL are answered by the second."""
    dead = f"tcp://127.0.0.1:{free_port()}"
    with Client(f"{dead},{sample_node.endpoint}", timeout=10.0) as client:
        assert client.endpoints == [dead, sample_node.endpoint] and client.endpoint == dead
        start = time.monotonic()
        assert client.ping()["node"]
        assert time.monotonic() - start < FAILOVER_BOUND
        assert client.endpoint == sample_node.endpoint      # it stays on the one that answered
        assert client.call("sample.tasks.add_two", 40, 2).get(timeout=30) == 42
        assert client.map("sample.tasks.add_two", [(i, 1) for i in range(20)], timeout=60) == \
            [i + 1 for i in range(20)]


def test_cli_skips_missing_ipc_socket(node: EcdProcess) -> None:
    """(b) EC_ENDPOINT with a socket file that does not exist first: `ecctl status` works."""
    result = run_ecctl(f"ipc:///nonexistent/x.sock,{node.endpoint}", "status", timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("node ")
    result = run_ecctl("", "--endpoint", f"ipc:///nonexistent/x.sock, {node.endpoint}", "ping",
                       "--json", timeout=60)
    assert result.returncode == 0, result.stderr.decode()


def test_every_ipc_socket_missing_is_no_daemon_at_once(short_dir: str) -> None:
    endpoints = f"ipc://{short_dir}/a.sock,ipc://{short_dir}/b.sock"
    start = time.monotonic()
    with Client(endpoints) as client, pytest.raises(NoDaemon) as info:
        client.ping()
    assert time.monotonic() - start < 2.0
    assert str(info.value) == f"no daemon at {endpoints}"
    result = run_ecctl(endpoints, "status", timeout=60)
    assert result.returncode == 2
    assert result.stderr.decode() == f"error: no daemon at {endpoints}\n"


def test_failover_when_the_node_in_use_is_killed(ecd_factory: Callable[..., EcdProcess]) -> None:
    """(c) A and B independent; A is killed with SIGKILL (its socket file stays): the next
    requests are answered by B (over TCP) within the deadline."""
    a = _named(ecd_factory, "a")
    b_tcp = f"tcp://127.0.0.1:{free_port()}"
    b = _named(ecd_factory, "b", listen=b_tcp)
    with admin_client(f"{a.endpoint},{b_tcp}", a.data_dir, b.data_dir, timeout=10.0) as client:
        assert client.ping()["node"] == "a" and client.status()["node"] == "a"
        a.kill9()
        start = time.monotonic()
        assert client.ping()["node"] == "b"
        assert time.monotonic() - start < FAILOVER_BOUND
        assert client.status()["node"] == "b" and client.endpoint == b_tcp


def test_result_wait_fails_over(ecd_factory: Callable[..., EcdProcess], sample_repo: str) -> None:
    """AsyncResult.get() leaves a killed node by itself: its GET reaches the next endpoint.
    Without a mesh B has never heard of the call and says so (404); in a mesh it would answer
    from its replica or forward the GET to the call's owner."""
    a = _named(ecd_factory, "a")
    b = _named(ecd_factory, "b")
    with Client(a.endpoint) as setup:
        register_sample(setup, sample_repo, concurrency=1)
    with Client(f"{a.endpoint},{b.endpoint}", timeout=10.0) as client:
        handle = client.call("sample.tasks.sleep", 60)
        assert handle.node == "a"
        a.kill9()
        start = time.monotonic()
        with pytest.raises(ServerError) as info:
            handle.get(timeout=30)
        assert info.value.code == 404 and handle.id in str(info.value)
        assert time.monotonic() - start < FAILOVER_BOUND
        assert client.endpoint == b.endpoint
