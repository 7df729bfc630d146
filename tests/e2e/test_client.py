"""End to end: the Python client (``ecctl.Function`` / ``ecctl.Client``) against a real ``ecd``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecctl import CallTimeout, Client, Function, RemoteError, ServerError, Socket
from tests.conftest import ROOT, EcdProcess, sample_node_for_module

@pytest.fixture(scope="module")
def client_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-client-") as node:
        yield node


@pytest.fixture
def env_endpoint(client_node: EcdProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    """EC_ENDPOINT points at the module's node, as a user's shell would."""
    monkeypatch.setenv("EC_ENDPOINT", client_node.endpoint)
    monkeypatch.delenv("EC_DATA_DIR", raising=False)
    return client_node.endpoint


@pytest.fixture
def fn(env_endpoint: str) -> Iterator[Callable[..., Function]]:
    """``fn(name)`` is ``Function(name)`` (endpoint from EC_ENDPOINT); the client each one made is
    closed after the test, so no socket outlives it."""
    made: list[Function] = []

    def make(name: str, **kwargs: Any) -> Function:
        made.append(Function(name, **kwargs))
        return made[-1]

    yield make
    for f in made:
        f.client.close()


RESULTS_BY_ID = """
import json, sys
from ecctl import Client, RemoteError
out = {}
with Client() as c:
    for call_id in sys.argv[1:]:
        try:
            out[call_id] = {"ok": True, "value": c.result(call_id, timeout=60)}
        except RemoteError as e:
            out[call_id] = {"ok": False, "type": e.type, "message": e.message, "call_id": e.call_id}
print(json.dumps(out))
"""


def results_in_new_process(endpoint: str, *call_ids: str) -> dict[str, Any]:
    """``Client().result(id)`` for each id, from a fresh python process with EC_ENDPOINT set."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EC_ENDPOINT": endpoint}
    env.pop("EC_DATA_DIR", None)
    proc = subprocess.run([sys.executable, "-c", RESULTS_BY_ID, *call_ids], capture_output=True,
                          timeout=100, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------- Function


def test_function_returns_once_accepted_then_get(fn: Callable[..., Function]) -> None:
    do_something = fn("sample.tasks.do_something")
    r = do_something("hello")
    assert isinstance(r.id, str) and len(r.id) == 36
    # accepted means the daemon knows the call durably already
    with Client() as c:
        record = c.ls_call(r.id)
    assert record["state"] in ("queued", "running", "done")
    assert record["socket"] == "sample.tasks.do_something"
    assert r.get(timeout=30) == "Do something: hello"
    assert r.state == "done"
    assert r.ready()


def test_socket_is_function_and_explicit_endpoint(client_node: EcdProcess) -> None:
    assert issubclass(Socket, Function)
    f = Socket("sample.tasks.do_this", client=Client(client_node.endpoint))
    try:
        assert f("x").get(timeout=30) == "Do this: x"
    finally:
        f.client.close()


def test_get_times_out_while_running(fn: Callable[..., Function]) -> None:
    r = fn("sample.tasks.sleep")(1.5)
    with pytest.raises(CallTimeout):
        r.get(timeout=0.2)
    assert r.get(timeout=30) == 1.5


def test_remote_error_fields(fn: Callable[..., Function]) -> None:
    r = fn("sample.tasks.fail")("boom")
    with pytest.raises(RemoteError) as info:
        r.get(timeout=30)
    err = info.value
    assert err.type == "ValueError"
    assert err.message == "boom"
    assert err.call_id == r.id
    assert str(err) == "ValueError: boom"
    assert "Traceback" in err.traceback
    assert "tasks.py" in err.traceback and "raise ValueError(message)" in err.traceback
    assert r.state == "failed"


def test_kwargs(fn: Callable[..., Function]) -> None:
    echo = fn("sample.tasks.echo")
    assert echo(1, "a", x=2).get(timeout=30) == {"args": [1, "a"], "kwargs": {"x": 2}}
    assert echo(message="m").get(timeout=30) == {"args": [], "kwargs": {"message": "m"}}
    assert fn("sample.tasks.add_two")(one=40, two=2).get(timeout=30) == 42


def test_values_round_trip(fn: Callable[..., Function]) -> None:
    values = [
        b"\x00\xffbytes\n", b"", None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1,
        1.5, -0.0, float("inf"), "", "ünïcödé ✓", [], {},
        {"nested": [1, [2, [3, {"deep": b"\x01", "none": None}]]], "list": [None, "s", b"b"]},
    ]
    got = fn("sample.tasks.echo")(*values, kw={"k": [b"v", None]}).get(timeout=30)
    assert got == {"args": values, "kwargs": {"kw": {"k": [b"v", None]}}}
    for value, back in zip(values, got["args"]):
        assert type(back) is type(value), (value, back)
    assert fn("sample.tasks.noop")().get(timeout=30) is None


def test_signature_partial(fn: Callable[..., Function]) -> None:
    add = fn("sample.tasks.add_two")
    assert add.p(40).delay(2).get(timeout=30) == 42
    assert add.p(1)(2).apply(timeout=30) == 3


def test_unknown_socket_raises_server_error(fn: Callable[..., Function]) -> None:
    with pytest.raises(ServerError) as info:
        fn("no.such.socket")("x")
    assert info.value.code == 404
    assert "no.such.socket" in str(info.value)


def test_resubmit_same_call_id_is_duplicate(env_endpoint: str) -> None:
    with Client() as c:
        first = c.call("sample.tasks.add_two", 2, 3, call_id="fixed-id-e2e-1")
        again = c.call("sample.tasks.add_two", 2, 3, call_id="fixed-id-e2e-1")
        assert first.id == again.id == "fixed-id-e2e-1"
        assert again.duplicate and not first.duplicate
        assert again.get(timeout=30) == 5
        assert c.ls_call("fixed-id-e2e-1")["attempts"] == 1


def test_map_many_calls_in_order(env_endpoint: str) -> None:
    with Client() as c:
        assert c.map("sample.tasks.add_two", [(i, i) for i in range(300)], timeout=60) == [2 * i for i in range(300)]
        assert c.map("sample.tasks.do_this", ["a", "b"], timeout=60) == ["Do this: a", "Do this: b"]
        with pytest.raises(RemoteError) as info:
            c.map("sample.tasks.fail", ["first", "second"], timeout=60)
        assert info.value.message == "first"
        with pytest.raises(ServerError) as refused:
            c.map("no.such.socket", [1], timeout=60)
        assert refused.value.code == 404


# ------------------------------------------------------------------------- result by id


def test_result_by_id_from_new_process(client_node: EcdProcess, fn: Callable[..., Function]) -> None:
    # still running when the other process asks: it long-polls until the end
    running = fn("sample.tasks.sleep")(1)
    done = fn("sample.tasks.do_something")("from afar")
    failed = fn("sample.tasks.fail")("far boom")
    assert done.get(timeout=30) == "Do something: from afar"
    out = results_in_new_process(client_node.endpoint, running.id, done.id, failed.id)
    assert out[running.id] == {"ok": True, "value": 1}
    assert out[done.id] == {"ok": True, "value": "Do something: from afar"}
    assert out[failed.id] == {"ok": False, "type": "ValueError", "message": "far boom", "call_id": failed.id}


def test_result_of_unknown_id_is_not_found(env_endpoint: str) -> None:
    with Client() as c, pytest.raises(ServerError) as info:
        c.result("never-submitted-id", timeout=10)
    assert info.value.code == 404


@pytest.mark.timeout(180)
def test_result_by_id_after_restart(sample_node: EcdProcess, monkeypatch: pytest.MonkeyPatch,
                                  request: pytest.FixtureRequest) -> None:
    monkeypatch.setenv("EC_ENDPOINT", sample_node.endpoint)
    client = Client()
    request.addfinalizer(client.close)
    ok = Function("sample.tasks.do_this", client=client)("survives")
    bad = Function("sample.tasks.fail", client=client)("still boom")
    assert ok.get(timeout=30) == "Do this: survives"
    with pytest.raises(RemoteError):
        bad.get(timeout=30)
    # in flight when the node is stopped: finished within the grace, or requeued and run later
    slow = Function("sample.tasks.sleep", client=client)(0.5)
    queued = [Function("sample.tasks.add_two", client=client)(i, i) for i in range(3)]

    assert sample_node.terminate() == 0
    sample_node.start()

    ids = [ok.id, bad.id, slow.id, *(q.id for q in queued)]
    out = results_in_new_process(sample_node.endpoint, *ids)
    assert out[ok.id] == {"ok": True, "value": "Do this: survives"}
    assert out[bad.id] == {"ok": False, "type": "ValueError", "message": "still boom", "call_id": bad.id}
    assert out[slow.id] == {"ok": True, "value": 0.5}
    for i, q in enumerate(queued):
        assert out[q.id] == {"ok": True, "value": 2 * i}
    # and the old handles in this process keep working against the restarted node
    assert ok.client.result(ok.id, timeout=30) == "Do this: survives"
    with Client(sample_node.endpoint) as c:
        for call_id in ids:
            names = [e["name"] for e in c.ls_call(call_id)["events"]]
            assert names.count("postrun") == (0 if call_id == bad.id else 1), names



IMPLICIT_CLIENT_CYCLE = """
import gc
from ecctl import Function

def work():
    f = Function("sample.tasks.do_this")
    assert f("x").get(timeout=30) == "Do this: x"
    cycle = [f]
    cycle.append(cycle)     # any reference cycle, e.g. a traceback holding the frame

work()
gc.collect()
print("collected")
"""


def test_implicit_client_in_reference_cycle_does_not_hang(client_node: EcdProcess) -> None:
    """``Function(name)(...)`` makes a Client the user never closes; collecting it must not hang
    the user's program."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EC_ENDPOINT": client_node.endpoint}
    try:
        proc = subprocess.run([sys.executable, "-c", IMPLICIT_CLIENT_CYCLE], capture_output=True,
                              timeout=6, env=env, cwd="/")
    except subprocess.TimeoutExpired:
        pytest.fail("the program hung while garbage-collecting an unclosed ecctl Client")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"collected"
