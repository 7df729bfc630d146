"""Client against the fake ROUTER peer: calls, results, errors, resends, timeouts."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

import protocol
from ecctl import (AsyncResult, CallTimeout, Client, Function, NoDaemon, RemoteError, ServerError, Signature,
                   UnknownServerKey)


@pytest.fixture
def client(fake) -> Client:  # type: ignore[no-untyped-def]
    c = Client(fake.endpoint, timeout=3.0, connect_timeout=3.0, resend_interval=0.3)
    yield c
    c.close()


def test_ping(client: Client) -> None:
    pong = client.ping()
    assert pong["node"] == "fake" and pong["version"] == "0.0-test" and pong["rtt"] >= 0


def test_call_and_result_values(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    handle = client.call("echo", "hi")
    assert isinstance(handle, AsyncResult) and handle.node == "fake" and not handle.duplicate
    assert len(handle.id) == 36
    assert handle.get(5) == "hi"
    assert client.call("blob").get(5) == b"\x00\x01raw\xff"
    assert client.call("obj").get(5) == {"n": 1, "list": [1, 2.5, None], "s": "x"}
    assert client.call("echo", 1, 2, k="v").get(5) == {"args": [1, 2], "kwargs": {"k": "v"}}
    calls = fake.of_type(protocol.Call)
    assert protocol.unpack(calls[-1].args) == [1, 2]
    assert protocol.unpack(calls[-1].kwargs) == {"k": "v"}


def test_explicit_call_id_and_duplicate(client: Client) -> None:
    first = client.call("echo", "x", call_id="my-id.1")
    again = client.call("echo", "x", call_id="my-id.1")
    assert first.id == again.id == "my-id.1" and again.duplicate


def test_remote_error(client: Client) -> None:
    handle = client.call("boom")
    with pytest.raises(RemoteError) as info:
        handle.get(5)
    err = info.value
    assert str(err) == "ValueError: bad input"
    assert err.type == "ValueError" and err.call_id == handle.id and "Traceback" in err.traceback
    assert handle.state == "failed"


def test_unknown_socket_is_server_error(client: Client) -> None:
    with pytest.raises(ServerError) as info:
        client.call("nope")
    assert info.value.code == protocol.E_NOT_FOUND and "unknown socket" in str(info.value)


def test_call_resend_keeps_call_id(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    fake.drop_calls = 2
    handle = client.call("echo", "again")
    calls = fake.of_type(protocol.Call)
    assert len(calls) == 3
    assert {c.call_id for c in calls} == {handle.id}
    assert len({c.request_id for c in calls}) == 1   # same request, re-sent as is
    assert handle.get(5) == "again"


def test_pending_then_result(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    fake.pending_polls = 3
    handle = client.call("upper", "abc")
    assert not handle.ready() and handle.state == "running"
    assert handle.get(5) == "ABC"
    assert handle.ready() and handle.state == "done"
    assert all(g.wait_ms <= 5000 for g in fake.of_type(protocol.Get))


def test_result_deadline(client: Client) -> None:
    handle = client.call("never")
    start = time.monotonic()
    with pytest.raises(CallTimeout) as info:
        handle.get(0.5)
    assert time.monotonic() - start < 3
    assert info.value.call_id == handle.id and isinstance(info.value, TimeoutError)


def test_stale_replies_dropped(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    fake.stale_first = True
    assert client.call("echo", 7).get(5) == 7


def test_admin_helpers(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    assert client.add_queue("q", "topic") == {"op": "add_queue", "args": {"name": "q", "type": "topic"}}
    client.add_processor("p", "https://git/x", "mod", concurrency=2)
    client.add_socket("s", "p", "fn", "q")
    client.delete("socket", "s")
    client.ls("queues")
    client.ls_calls(limit=5, offset=10, unfinished=True)
    client.ls_call("abc", result=True)
    client.status()
    ops = [(m.op, m.args) for m in fake.of_type(protocol.Admin)]
    assert ops == [
        ("add_queue", {"name": "q", "type": "topic"}),
        ("add_processor", {"name": "p", "gitrepo": "https://git/x", "module": "mod", "concurrency": 2}),
        ("add_socket", {"name": "s", "processor": "p", "function": "fn", "queue": "q"}),
        ("delete_socket", {"name": "s"}),
        ("ls_queues", {}),
        ("ls_calls", {"limit": 5, "offset": 10, "unfinished": True}),
        ("ls_call", {"id": "abc", "result": True}),
        ("status", {}),
    ]


def test_network_methods(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    client.add("queue", name="q", type="topic")
    client.add("plugs", name="pl", source="a", target="b", queue="q")
    client.update("processor", "p", concurrency=3, commit=None)
    client.update("flow", "f", processors=["p"])
    for kind in ("queue", "node", "processor", "socket", "plug", "deployment", "flow"):
        client.delete(kind, "x")
        client.ls(kind)
        client.ls(kind + "s")
    for action in ("pause", "resume", "stop", "start", "restart", "remove"):
        client.proc(action, "p")
    client.apply({"queues": [{"name": "q"}]})
    client.apply({"queues": []}, dry_run=True, prune=True)
    client.export()
    client.ls_calls()
    client.ls_calls(page=3, rows=25, unfinished=True, socket="s1")
    client.ls_calls(2, 5)
    client.ls_calls(limit=5)
    client.ls_calls(offset=20, socket="s")
    ops = [(m.op, m.args) for m in fake.of_type(protocol.Admin)]
    kinds = ("queue", "node", "processor", "socket", "plug", "deployment", "flow")
    assert ops == [
        ("add_queue", {"name": "q", "type": "topic"}),
        ("add_plug", {"name": "pl", "source": "a", "target": "b", "queue": "q"}),
        ("update_processor", {"name": "p", "concurrency": 3, "commit": None}),
        ("update_flow", {"name": "f", "processors": ["p"]}),
        *[op for kind in kinds for op in [(f"delete_{kind}", {"name": "x"}), (f"ls_{kind}s", {}),
                                          (f"ls_{kind}s", {})]],
        *[(f"proc_{action}", {"name": "p"})
          for action in ("pause", "resume", "stop", "start", "restart", "remove")],
        ("apply", {"spec": {"queues": [{"name": "q"}]}, "dry_run": False, "prune": False}),
        ("apply", {"spec": {"queues": []}, "dry_run": True, "prune": True}),
        ("export", {}),
        ("ls_calls", {"page": 1, "rows": 10, "unfinished": False}),
        ("ls_calls", {"page": 3, "rows": 25, "unfinished": True, "socket": "s1"}),
        ("ls_calls", {"page": 2, "rows": 5, "unfinished": False}),
        ("ls_calls", {"limit": 5, "offset": 0, "unfinished": False}),
        ("ls_calls", {"limit": 50, "offset": 20, "unfinished": False, "socket": "s"}),
    ]


def test_network_methods_refuse_unknown_names(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    for bad in (lambda: client.add("widget", name="w"), lambda: client.ls("calls"),
                lambda: client.delete("s", "x"), lambda: client.update("queuez", "q", type="x"),
                lambda: client.proc("explode", "p")):
        with pytest.raises(ValueError):
            bad()
    assert fake.received == []


def test_admin_error(client: Client, fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["add_queue"] = protocol.Error(code=409, reason="queue q exists", detail={"name": "q"})
    with pytest.raises(ServerError) as info:
        client.add_queue("q")
    assert (info.value.code, info.value.reason, info.value.detail) == (409, "queue q exists", {"name": "q"})


def test_function_and_signature(fake) -> None:  # type: ignore[no-untyped-def]
    f = Function("echo")
    handle = f("a", "b")
    assert handle.get(5) == ["a", "b"]
    sig = f.p("x")
    assert isinstance(sig, Signature)
    assert sig.delay("y").get(5) == ["x", "y"]
    assert sig.apply(timeout=5) == "x"
    f.client.close()


def test_no_daemon_ipc_missing(short_dir: str) -> None:
    start = time.monotonic()
    with Client(f"ipc://{short_dir}/none.sock") as c, pytest.raises(NoDaemon) as info:
        c.ping()
    assert time.monotonic() - start < 1
    assert str(info.value) == f"no daemon at ipc://{short_dir}/none.sock"


def test_no_daemon_tcp_silent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = zmq.curve_keypair()[0].decode()
    with Client(f"tcp://127.0.0.1:{port}", connect_timeout=0.5, server_key=key) as c, pytest.raises(NoDaemon):
        c.call("echo", 1)


def test_a_tcp_endpoint_whose_key_is_unknown_is_refused_before_anything_is_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    with Client(endpoint, connect_timeout=0.5) as c, pytest.raises(UnknownServerKey) as info:
        c.ping()
    assert "ecd keys show" in str(info.value) and f"ecctl trust {endpoint} KEY" in str(info.value)


def test_result_survives_daemon_restart(client: Client, fake, fake_daemon_cls) -> None:  # type: ignore[no-untyped-def]
    """NoDaemon/timeouts while waiting for a result are retried until the caller's deadline."""
    handle = client.call("never")
    assert handle.state == "running"

    def gets_seen() -> int:
        return sum(1 for m in list(fake.received) if isinstance(m, protocol.Get) and m.call_id == handle.id)

    def restart() -> None:
        deadline = time.monotonic() + 10
        while gets_seen() < 2 and time.monotonic() < deadline:  # the long poll has started
            time.sleep(0.01)
        fake.stop()
        time.sleep(0.5)  # the outage itself (the fault injected), not a synchronisation
        reborn = fake_daemon_cls(fake.endpoint)
        reborn.results[handle.id] = protocol.Result(call_id=handle.id, ok=True,
                                                    value=protocol.pack("late"))
        box.append(reborn.start())

    box: list = []
    thread = threading.Thread(target=restart)
    thread.start()
    try:
        assert handle.get(20) == "late"
    finally:
        thread.join()
        for d in box:
            d.stop()
