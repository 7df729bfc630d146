"""The decorator and object APIs on a real node: the seed's shapes declare processors, sockets,
queues and plugs over ZeroMQ; running the same definitions twice changes nothing; declared
sockets are callable; a declared plug fires."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from ecctl import Client, Plug, Processor, ProcessorBase, Socket, plug, processor, socket
from tests.conftest import EcdProcess, processor_view, sample_node_for_module
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def decl_node(venv_cache: Path, sample_repo: str) -> Iterator[EcdProcess]:
    with sample_node_for_module(venv_cache, sample_repo, "ec-declare-") as node:
        yield node


@pytest.fixture
def client(decl_node: EcdProcess) -> Iterator[Client]:
    with Client(decl_node.endpoint, timeout=30) as c:
        yield c


def _define(client: Client, repo: str) -> tuple[type, type]:
    """The seed's decorator example, on the sample processor (its functions by name)."""

    @processor(name="dproc2", gitrepo=repo, module="sample.tasks", concurrency=1, client=client)
    class ProcessorB(ProcessorBase):
        """Description"""

        @socket(name="dproc2.do_this", processor="dproc2", arguments=True, queue={"name": "sockq2"})
        def do_this(message):  # noqa: N805 - the body is never run here: the repo's function is
            return "local body, never called"

    @processor(name="dproc1", gitrepo=repo, module="sample.tasks", concurrency=1, client=client)
    class ProcessorA(ProcessorBase):
        @plug(name="dplug1", target="dproc2.do_this",
              queue={"name": "dqueue1", "message_ttl": 300, "durable": True, "expires": 200})
        @socket(name="dproc1.do_something", processor="dproc1", beat=False, queue={"name": "sockq1"})
        def do_something(message):  # noqa: N805
            """do_something"""

    return ProcessorA, ProcessorB


def test_decorators_declare_the_network_once(client: Client, sample_repo: str) -> None:
    a, b = _define(client, sample_repo)
    version = client.status()["topology"]["version"]
    exported = client.export()
    _define(client, sample_repo)  # the same definitions again: nothing changes
    assert client.status()["topology"]["version"] == version
    assert client.export() == exported
    plugs = {p["name"]: p for p in exported["plugs"]}
    assert (plugs["dplug1"]["source"], plugs["dplug1"]["target"], plugs["dplug1"]["queue"]) == \
        ("dproc1.do_something", "dproc2.do_this", "dqueue1")
    queues = {q["name"]: q for q in exported["queues"]}
    assert {"sockq1", "sockq2", "dqueue1"} <= set(queues) and queues["dqueue1"]["message_ttl"] == 300
    sockets = {s["name"]: s for s in exported["sockets"]}
    assert (sockets["dproc1.do_something"]["processor"], sockets["dproc1.do_something"]["function"]) == \
        ("dproc1", "do_something")
    for name in ("dproc1", "dproc2"):
        wait_for(lambda: processor_view(client, name).get("status") == "running", 120, what=f"{name} running")
    call = a.do_something("hi")  # a declared socket is a Function: this runs the repo's code
    assert call.get(30) == "Do something: hi"
    [child] = wait_for(lambda: client.ls_call(call.id)["children"], 10, what="the plug's call")
    assert client.result(child, timeout=30) == "Do this: Do something: hi"
    assert b.do_this("x").get(30) == "Do this: x"


def test_objects_declare_the_network_once(client: Client, sample_repo: str) -> None:
    def build() -> tuple[Processor, Socket, Socket, Plug]:
        proc = Processor(name="oproc1", user="USER", module="sample.tasks", branch="main", concurrency=1,
                         gitrepo=sample_repo, client=client)
        do_something = Socket(name="oproc1.do_something", user="USER", interval=None, processor=proc,
                              queue={"name": "oqueue1"}, task="do_something", client=client)
        do_this = Socket(name="oproc1.do_this", processor=proc, queue={"name": "oqueue2"}, task="do_this",
                         client=client)
        link = Plug(name="oplug1", processor=proc, user="USER", source=do_something, queue={"name": "oqueue3"},
                    target=do_this)
        return proc, do_something, do_this, link

    first = build()
    assert [c["name"] for c in first[0].changes] == ["oproc1"]
    assert {c["kind"] for c in first[3].changes} == {"queue", "plug"}
    again = build()
    assert [obj.changes for obj in again] == [[], [], [], []]
    assert again[1].socket["queue"] == "oqueue1" and again[3].plug["target"] == "oproc1.do_this"
    wait_for(lambda: processor_view(client, "oproc1").get("status") == "running", 120, what="oproc1 running")
    call = again[1]("obj")
    assert call.get(30) == "Do something: obj"
    [child] = wait_for(lambda: client.ls_call(call.id)["children"], 10, what="the plug's call")
    assert client.result(child, timeout=30) == "Do this: Do something: obj"
    # a socket named only is a reference to an existing one, like Function
    assert Socket("oproc1.do_this", client=client)("ref").get(30) == "Do this: ref"


def test_bad_declarations_say_what_is_wrong(client: Client, sample_repo: str) -> None:
    with pytest.raises(TypeError, match="unknown processor field.*colour"):
        Processor(name="bad", gitrepo=sample_repo, module="sample.tasks", colour="red", client=client)
    with pytest.raises(TypeError, match="needs processor="):
        @socket(name="loose.echo", queue="q1")
        def echo(*args: Any) -> None: ...
    with pytest.raises(TypeError, match="@plug goes above @socket"):
        plug(name="p", target="x", queue="q1")(lambda: None)  # type: ignore[arg-type]
