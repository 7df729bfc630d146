"""Plugs end to end on a real node: a call's result (or error) becomes a call of the plug's
target in the same commit, fan-out, argument joins paired by run (across a restart), live
rewiring, cycles refused, exactly one plug call when the upstream ran twice, and the call tree.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client, Function, RemoteError, ServerError
from tests.conftest import EcdProcess, processor_view, register_sample, run_ecctl, sample_node_for_module
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def flow_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-dataflow-") as node:
        yield node


@pytest.fixture
def client(flow_node: EcdProcess) -> Iterator[Client]:
    with Client(flow_node.endpoint, timeout=30) as c:
        yield c


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _socket(client: Client, function: str, processor: str = "proc1") -> str:
    name = _name(function)
    client.add_socket(name, processor=processor, function=function, queue="q1")
    return name


def _plug(client: Client, source: str, target: str, **fields: Any) -> str:
    name = _name("plug")
    client.add("plug", name=name, source=source, target=target, queue="q1", **fields)
    return name


def _settled(client: Client, call_id: str, states: tuple[str, ...] = ("done", "failed")) -> dict[str, Any]:
    return wait_for(lambda: (c := client.ls_call(call_id, result=True))["state"] in states and c,
                    30, what=f"call {call_id} in {states}")


def _children(client: Client, call_id: str) -> list[dict[str, Any]]:
    record = _settled(client, call_id)
    return [_settled(client, child, ("done", "failed", "waiting")) for child in record["children"]]


def test_a_result_plug_makes_one_call_of_the_target_with_the_result(client: Client) -> None:
    source, target = _socket(client, "do_something"), _socket(client, "do_this")
    plug = _plug(client, source, target)
    upstream = Function(source, client=client)("hello")
    assert upstream.get(30) == "Do something: hello"
    [downstream] = _children(client, upstream.id)
    assert downstream["socket"] == target and downstream["state"] == "done"
    assert downstream["result"] == "Do this: Do something: hello"
    assert (downstream["parent"], downstream["root"], downstream["via"]) == (upstream.id, upstream.id, f"plug {plug}")
    assert downstream["id"].startswith("p-")  # derived from (upstream call, plug): one per upstream
    assert client.result(downstream["id"], timeout=10) == "Do this: Do something: hello"


def test_every_plug_from_a_socket_fires_and_error_plugs_carry_the_error(client: Client) -> None:
    source = _socket(client, "fail")
    _plug(client, source, _socket(client, "echo"))       # RESULT plugs: the source fails, so
    _plug(client, source, _socket(client, "echo"))       # they do not fire
    on_error = [_socket(client, "echo"), _socket(client, "echo")]
    for target in on_error:
        _plug(client, source, target, type="ERROR")
    failing = Function(source, client=client)("boom")
    with pytest.raises(RemoteError, match="ValueError: boom"):
        failing.get(30)
    fired = _children(client, failing.id)
    assert sorted(c["socket"] for c in fired) == sorted(on_error)
    for call in fired:
        [error] = call["result"]["args"]
        assert (error["type"], error["message"], error["call_id"], error["socket"]) == \
            ("ValueError", "boom", failing.id, source)
        assert "Traceback" in error["traceback"]
    ok_source = _socket(client, "do_this")
    targets = [_socket(client, "echo") for _ in range(3)]
    for target in targets:
        _plug(client, ok_source, target)
    call = Function(ok_source, client=client)("x")
    call.get(30)
    assert sorted(c["socket"] for c in _children(client, call.id)) == sorted(targets)


def test_rewiring_affects_the_calls_that_end_after_the_change(client: Client) -> None:
    source, first, second = _socket(client, "do_this"), _socket(client, "echo"), _socket(client, "echo")
    plug = _plug(client, source, first)
    before = Function(source, client=client)("a")
    before.get(30)
    assert [c["socket"] for c in _children(client, before.id)] == [first]
    client.update("plug", plug, target=second)
    after = Function(source, client=client)("b")
    after.get(30)
    assert [c["socket"] for c in _children(client, after.id)] == [second]
    client.delete("plug", plug)
    unplugged = Function(source, client=client)("c")
    unplugged.get(30)
    assert _settled(client, unplugged.id)["children"] == []


def test_a_plug_that_would_make_a_cycle_is_refused(flow_node: EcdProcess, client: Client) -> None:
    a, b, c = _socket(client, "echo"), _socket(client, "echo"), _socket(client, "echo")
    _plug(client, a, b)
    _plug(client, b, c)
    out = run_ecctl(flow_node.endpoint, "add", "plug", "-n", _name("loop"), "--source", c, "--target", a, "-q", "q1")
    assert out.returncode == 1
    assert f"would make a cycle: {c} -> {a} -> {b} -> {c}" in out.stderr.decode()


def test_ls_call_tree_graph_and_flow_show_the_run(flow_node: EcdProcess, client: Client) -> None:
    source, middle, last = _socket(client, "do_something"), _socket(client, "do_this"), _socket(client, "echo")
    _plug(client, source, middle)
    _plug(client, middle, last)
    root = Function(source, client=client)("t")
    root.get(30)
    [mid] = _children(client, root.id)
    [end] = _children(client, mid["id"])
    tree = client.ls_call(root.id, tree=True)
    assert sorted(tree["edges"]) == sorted([[root.id, mid["id"]], [mid["id"], end["id"]]])
    flow = client.ls_call(mid["id"], flow=True)
    assert {c["id"] for c in flow["calls"]} == {root.id, mid["id"], end["id"]}
    out = run_ecctl(flow_node.endpoint, "ls", "call", "--id", root.id, "--tree", "--result")
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines[0].startswith(f"{source}  [done]  {root.id}") and lines[0].endswith("= Do something: t")
    assert lines[1].startswith(f"└── {middle}  [done]  {mid['id']}")
    assert lines[2].startswith(f"    └── {last}  [done]  {end['id']}")
    out = run_ecctl(flow_node.endpoint, "ls", "call", "--id", end["id"], "--graph")
    text = out.stdout.decode()
    assert out.returncode == 0 and f"run {root.id}: 3 call(s) in 3 level(s)" in text, text
    assert f"*#3   {last}" in text and "<- #2" in text
    out = run_ecctl(flow_node.endpoint, "ls", "call", "--id", root.id, "--flow", "--json")
    assert {c["via"] for c in json.loads(out.stdout)["calls"]} >= {None}


def test_a_join_runs_once_both_arguments_of_the_run_arrived(flow_node: EcdProcess, client: Client) -> None:
    source = _socket(client, "do_something")
    left, right, join = _socket(client, "do_this"), _socket(client, "do_this"), _socket(client, "add_two")
    _plug(client, source, left)
    _plug(client, source, right)
    _plug(client, left, join, argument="one")
    _plug(client, right, join, argument="two")
    runs = [Function(source, client=client)(word) for word in ("x", "y")]
    for run in runs:
        run.get(30)
    for run, word in zip(runs, ("x", "y")):
        joins = {c["id"] for branch in _children(client, run.id) for c in _children(client, branch["id"])}
        assert len(joins) == 1  # both branches feed the same join of this run
        result = _settled(client, joins.pop())
        assert result["result"] == f"Do this: Do something: {word}" * 2  # one + two, of this run only
        assert result["kind"] == "join" and result["state"] == "done"


def test_one_result_can_feed_both_arguments_of_a_join(client: Client) -> None:
    source, join = _socket(client, "do_something"), _socket(client, "add_two")
    _plug(client, source, join, argument="one")
    _plug(client, source, join, argument="two")
    run = Function(source, client=client)("z")
    run.get(30)
    [joined] = _children(client, run.id)
    result = _settled(client, joined["id"])
    assert (result["kind"], result["state"]) == ("join", "done")
    assert result["result"] == "Do something: z" * 2
    assert result["parents"] == [run.id]


def test_a_failed_upstream_fails_the_join_of_its_run(client: Client) -> None:
    """``fail`` would deliver argument two: it fails, so the join fails (no wait for ever) with
    an error naming the failed call, and the join socket's ERROR plug fires for it."""
    source, ok, failing = _socket(client, "do_something"), _socket(client, "do_this"), _socket(client, "fail")
    join, alarm = _socket(client, "add_two"), _socket(client, "echo")
    _plug(client, source, ok)
    _plug(client, source, failing)
    _plug(client, ok, join, argument="one")
    _plug(client, failing, join, argument="two")
    _plug(client, join, alarm, type="ERROR")
    run = Function(source, client=client)("w")
    run.get(30)
    branches = {c["socket"]: c for c in _children(client, run.id)}
    failed_id = branches[failing]["id"]
    assert branches[failing]["state"] == "failed"
    [joined] = [c for c in _children(client, failed_id) if c["socket"] == join]
    joined = _settled(client, joined["id"])
    assert (joined["kind"], joined["state"], joined["error"]["type"]) == ("join", "failed", "UpstreamFailed")
    assert f"argument two will not arrive: call {failed_id}" in joined["error"]["message"]
    assert "ValueError: Do something: w" in joined["error"]["message"]
    with pytest.raises(RemoteError, match="UpstreamFailed"):
        client.result(joined["id"], timeout=10)
    [fired] = _children(client, joined["id"])
    assert fired["socket"] == alarm
    [error] = fired["result"]["args"]
    assert (error["type"], error["call_id"]) == ("UpstreamFailed", joined["id"])
    # the other argument arrives too (or already did): the failed join stays failed, runs never
    wait_for(lambda: _settled(client, branches[ok]["id"])["state"] == "done", 30, what="the ok branch")
    assert _settled(client, joined["id"])["state"] == "failed" and client.ls_call(joined["id"])["attempts"] == 0


def test_a_join_failed_by_a_failed_join_is_stored_failed(client: Client) -> None:
    """``fail`` feeds add_two's ``one`` (ERROR plug) and, through a join of ``echo`` that fails
    with it, add_two's ``two``: one commit both fills and fails the add_two join, which stays
    failed in the log (not waiting)."""
    source, middle, join = _socket(client, "fail"), _socket(client, "echo"), _socket(client, "add_two")
    _plug(client, source, join, type="ERROR", argument="one")
    _plug(client, source, middle, argument="message")
    _plug(client, middle, join, argument="two")
    run = Function(source, client=client)("boom")
    with pytest.raises(RemoteError, match="ValueError: boom"):
        run.get(30)
    joins = {c["socket"]: c for c in _children(client, run.id)}
    assert joins[middle]["state"] == "failed" and joins[middle]["error"]["type"] == "UpstreamFailed"
    final = _settled(client, joins[join]["id"])
    assert (final["state"], final["error"]["type"]) == ("failed", "UpstreamFailed")
    assert f"argument two will not arrive: call {joins[middle]['id']}" in final["error"]["message"]
    assert client.ls_calls(rows=50, socket=join, unfinished=True)["calls"] == []


def test_ids_of_the_kind_the_daemons_make_are_refused(client: Client) -> None:
    for call_id in ("p-" + "0" * 32, "j-" + "ab" * 16, "s-" + "f" * 32, "t-" + "1" * 32):
        with pytest.raises(ServerError, match="is reserved"):
            client.call("sample.tasks.echo", 1, call_id=call_id)
    with pytest.raises(ServerError, match="is reserved"):
        client.submit_flow({"call": "sample.tasks.echo", "args": b"\x90", "kwargs": b"\x80"}, flow_id="s-" + "0" * 32)
    assert client.call("sample.tasks.echo", 1, call_id="p-" + "0" * 31).get(30) == {"args": [1], "kwargs": {}}


def test_join_arguments_arriving_apart_and_across_a_restart(ecd_factory: Any, sample_repo: str) -> None:
    """The first argument arrives and waits (durable) while the other branch's processor is
    paused; the node is killed with SIGKILL and started again; the second arrives later and the
    join runs once with both."""
    node = ecd_factory("join", cpus=2)
    with Client(node.endpoint, timeout=30) as c:
        register_sample(c, sample_repo)
        c.add_processor("slow", sample_repo, "sample.tasks", concurrency=1)
        wait_for(lambda: processor_view(c, "slow").get("status") == "running", 120, what="slow running")
        for name, proc, fn in (("src", "proc1", "do_something"), ("fast", "proc1", "do_this"),
                               ("late", "slow", "do_this"), ("sum", "proc1", "add_two")):
            c.add_socket(name, processor=proc, function=fn, queue="q1")
        for name, src, dst, arg in (("a", "src", "fast", None), ("b", "src", "late", None),
                                    ("c", "fast", "sum", "one"), ("d", "late", "sum", "two")):
            c.add("plug", name=name, source=src, target=dst, queue="q1", **({"argument": arg} if arg else {}))
        c.proc("pause", "slow")
        root = c.call("src", "r")
        root.get(30)
        join_id = wait_for(lambda: next((x["id"] for x in c.ls_call(root.id, flow=True)["calls"]
                                         if x["kind"] == "join" and x["state"] == "waiting"), None),
                           30, what="the join waiting for its second argument")
    node.kill9()
    node.start()
    with Client(node.endpoint, timeout=30) as c:
        waiting = c.ls_call(join_id)
        assert waiting["state"] == "waiting"
        [first] = waiting["parents"]
        assert [e["note"] for e in waiting["events"] if e["name"] == "arrived"] == [
            f"Argument one from call {first}; waiting for two"]
        c.proc("resume", "slow")
        assert c.result(join_id, timeout=60) == "Do this: Do something: r" * 2
        assert c.ls_call(join_id)["attempts"] == 1


def test_a_plug_fires_once_when_its_upstream_runs_twice(ecd_factory: Any, sample_repo: str) -> None:
    """The node is killed with SIGKILL while the upstream call runs: it runs again after the
    restart, and its plug still makes exactly one downstream call."""
    node = ecd_factory("twice", cpus=2)
    with Client(node.endpoint, timeout=30) as c:
        register_sample(c, sample_repo)
        c.add("plug", name="after", source="sample.tasks.token", target="sample.tasks.echo", queue="q1")
        upstream = c.call("sample.tasks.token", 3.0)
        first = wait_for(lambda: (r := c.ls_call(upstream.id))["state"] == "running" and r, 30, what="upstream running")
    node.kill9()
    node.start()
    with Client(node.endpoint, timeout=30) as c:
        token = c.result(upstream.id, timeout=60)
        record = c.ls_call(upstream.id)
        # it was running in a worker when the node died; another worker ran it after the restart
        assert int(token.split(":")[1]) != first["worker"] and record["worker"] != first["worker"]
        calls = c.ls_call(upstream.id, flow=True)["calls"]
        downstream = [x for x in calls if x["via"] == "plug after"]
        assert len(downstream) == 1 and downstream[0]["id"] == record["children"][0]
        assert c.result(downstream[0]["id"], timeout=30) == {"args": [token], "kwargs": {}}
        # the same call id sent again is a duplicate: nothing fires twice
        again = c.call("sample.tasks.token", 3.0, call_id=upstream.id)
        assert again.duplicate
        assert [x["id"] for x in c.ls_call(upstream.id, flow=True)["calls"] if x["via"] == "plug after"] == \
            [downstream[0]["id"]]
