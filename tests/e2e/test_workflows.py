"""Workflows end to end: the seed's pipeline / parallel / funnel examples as written (names
aside) on a real node, checked against a local model of the semantics the issue states; a
failed step fails the workflow with its error and call id; a workflow outlives the process that
sent it; a workflow sent twice with one id runs once; the call graph of a workflow.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client, Function, RemoteError, ServerError, funnel, parallel, pipeline
from ecctl.workflows import Funnel, Parallel, Pipeline
from tests.conftest import ROOT, EcdProcess, run_ecctl, sample_node_for_module
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def wf_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-workflows-") as node:
        yield node


@pytest.fixture
def client(wf_node: EcdProcess) -> Iterator[Client]:
    with Client(wf_node.endpoint, timeout=30) as c:
        yield c


# A model of the semantics (Celery chain/group/chord, as the issue states them), run locally on
# a local copy of the sample function: the oracle the daemons' results are checked against.

def _do_something(message: Any, *more: Any) -> str:
    return "Do something: " + " ".join(str(part) for part in (message, *more))


_UNSET = object()


def model(task: Any, given: Any = _UNSET) -> Any:
    head = [] if given is _UNSET else [given]
    if isinstance(task, Pipeline):
        value = given
        for step in task.tasks:
            value = model(step, value)
        return value
    if isinstance(task, Parallel):
        return [model(member, given) for member in task.tasks]
    if isinstance(task, Funnel):
        return model(task.final, [model(member, given) for member in task.tasks])
    assert task.function.endswith("do_something")
    return _do_something(*head, *task.args)


def test_the_seed_funnel_example_runs_as_written(client: Client) -> None:
    do_something = Function("sample.tasks.do_something", client=client).p
    _pipeline = pipeline([
        do_something("One"),
        do_something("Two"),
        parallel([
            do_something("Four"),
            do_something("Five"),
        ]),
        do_something("Three")])
    _parallel = parallel([
        _pipeline,
        do_something("Six"),
        do_something("Seven")])
    _funnel = funnel([
        do_something("Eight"),
        _parallel,
        do_something("Nine")])
    result = _funnel(do_something("Four"))
    expected = model(funnel(_funnel.tasks, do_something("Four")))
    assert result.get(60) == expected
    assert expected.startswith("Do something: ['Do something: Eight', [\"Do something: ['Do something: Do")
    # the workflow is one record: its result by id, from any client
    assert Client(client.endpoint).result(result.id, timeout=10) == expected


def test_the_seed_lambda_api_example_nests_funnels(client: Client) -> None:
    do_something = Function("sample.tasks.do_something", client=client).p
    _pipeline = pipeline([do_something("One"), do_something("Two"),
                          parallel([do_something("Four"), do_something("Five")]), do_something("Three")])
    assert _pipeline().get(60) == model(_pipeline)
    _parallel = parallel([_pipeline, do_something("Six"), do_something("Seven")])
    _funnel = funnel([do_something("Eight"), _parallel, do_something("Nine")], do_something("A"))
    _funnel2 = funnel([_parallel, do_something("Ten")], do_something("B"))
    _funnel3 = funnel([_funnel, _funnel2])
    result = _funnel3(do_something("Eleven"))
    assert result.get(60) == model(funnel([_funnel, _funnel2], do_something("Eleven")))


def test_a_workflow_takes_an_input_and_structures_nest(client: Client) -> None:
    do_something = Function("sample.tasks.do_something", client=client).p
    flow = pipeline(do_something("a"), parallel([do_something("b"), pipeline([do_something("c")])]))
    assert flow("in").get(60) == model(flow, "in") == [
        "Do something: Do something: in a b", "Do something: Do something: in a c"]
    add_two = Function("sample.tasks.add_two", client=client)
    assert pipeline([add_two.p(1, 2), add_two.p(10)]).apply(timeout=60) == 13


def test_a_failed_step_fails_the_workflow_with_its_error_and_call_id(client: Client) -> None:
    do_something = Function("sample.tasks.do_something", client=client).p
    fail = Function("sample.tasks.fail", client=client).p
    flow = pipeline([do_something("a"), parallel([do_something("b"), fail()]), do_something("never")])
    handle = flow()
    with pytest.raises(RemoteError) as info:
        handle.get(60)
    error = info.value
    assert error.type == "ValueError" and "Do something: a" in error.message  # fail(previous result)
    assert error.workflow_id == handle.id and error.step == "1.1"
    step = client.ls_call(error.call_id)
    assert (step["socket"], step["state"], step["flow"], step["step"]) == ("sample.tasks.fail", "failed", handle.id, "1.1")
    # the step after the parallel never started
    graph = client.ls_call(handle.id, graph=True)
    assert sorted(c.get("step") or "" for c in graph["calls"]) == ["", "0", "1.0", "1.1"]
    assert client.ls_call(handle.id)["state"] == "failed"
    # steps retry as their processor says (retries=1 here): the failing one ran twice
    assert step["attempts"] == 2


def test_unknown_sockets_and_bad_graphs_are_refused_before_anything_runs(client: Client) -> None:
    ghost = Function("no.such.socket", client=client).p
    with pytest.raises(ServerError) as info:
        pipeline([Function("sample.tasks.echo", client=client).p(1), ghost()])()
    assert info.value.code == 404 and "no.such.socket" in info.value.reason and "step 1" in info.value.reason
    with pytest.raises(ValueError):
        parallel([])
    with pytest.raises(TypeError):
        pipeline(["not a signature"])


def test_a_workflow_sent_twice_with_one_id_runs_once(client: Client) -> None:
    token = Function("sample.tasks.token", client=client).p
    flow = parallel([token(), token()])
    first = flow.delay(workflow_id="wf-once-1")
    again = flow.delay(workflow_id="wf-once-1")
    assert again.duplicate and again.id == first.id
    assert first.get(60) == again.get(60)
    assert len({c["id"] for c in client.ls_call(first.id, flow=True)["calls"]}) == 3


def test_a_workflow_outlives_the_process_that_sent_it(wf_node: EcdProcess, client: Client) -> None:
    script = textwrap.dedent(f"""
        from ecctl import Client, Function, pipeline
        c = Client({wf_node.endpoint!r})
        sleep = Function("sample.tasks.sleep", client=c).p
        echo = Function("sample.tasks.echo", client=c).p
        print(pipeline([sleep(1.0), echo("after")])().id, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    flow_id = out.stdout.strip()
    assert client.ls_call(flow_id)["state"] == "running"  # its sender is gone; it goes on
    assert client.result(flow_id, timeout=60) == {"args": [1.0, "after"], "kwargs": {}}


def test_ls_call_graph_of_a_workflow(wf_node: EcdProcess, client: Client) -> None:
    echo = Function("sample.tasks.echo", client=client).p
    handle = funnel([echo(1), echo(2)], echo("f"))()
    handle.get(60)
    out = run_ecctl(wf_node.endpoint, "ls", "call", "--id", handle.id, "--graph")
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()
    assert f"run {handle.id}: 4 call(s) in 3 level(s)" in text
    assert "workflow:funnel  [done]" in text and "(step 1)  <- #2, #3" in text
    wait_for(lambda: client.ls_call(handle.id)["state"] == "done", 5)
