"""Workflow graph logic (ecd.workflow): paths, what starts when a step ends, structure results."""

from __future__ import annotations

import protocol
from ecd import workflow as W


def step(name: str, *args: object) -> dict:
    return {"call": name, "args": protocol.pack(list(args)), "kwargs": protocol.pack({})}


def test_funnels_become_a_pipeline_of_a_parallel_and_the_final() -> None:
    graph = W.normalize({"funnel": [step("a"), step("b")], "final": step("f")})
    assert W.kind(graph) == W.PIPELINE and W.label(graph) == "funnel"
    assert [path for path, _ in W.steps(graph)] == ["0.0", "0.1", "1"]
    assert W.normalize({"funnel": [step("a")], "final": None}) == {"parallel": [step("a")]}


def test_advance_walks_pipelines_and_waits_for_parallels() -> None:
    graph = W.normalize({"pipeline": [step("a"), {"parallel": [step("b"), {"pipeline": [step("c"), step("d")]}]},
                                      step("e")]})
    assert [p for p, _ in W.first_steps(graph, "")] == ["0"]
    done = {"0": protocol.pack("A")}
    starts, final, given = W.advance(graph, done, "0")
    assert [p for p, _ in starts] == ["1.0", "1.1.0"] and final is None and given == "0"
    done["1.1.0"] = protocol.pack("C")
    starts, final, given = W.advance(graph, done, "1.1.0")
    assert [p for p, _ in starts] == ["1.1.1"] and given == "1.1.0"
    done["1.0"] = protocol.pack("B")
    assert W.advance(graph, done, "1.0")[0] == []  # the other member still runs
    done["1.1.1"] = protocol.pack("D")
    starts, final, given = W.advance(graph, done, "1.1.1")
    assert [p for p, _ in starts] == ["2"] and given == "1"
    assert protocol.unpack(W.value(graph, done, "1")) == ["B", "D"]
    done["2"] = protocol.pack("E")
    assert W.advance(graph, done, "2") == ([], protocol.pack("E"), "")


def test_successors_name_where_a_result_flows() -> None:
    graph = W.normalize({"funnel": [step("a"), {"pipeline": [step("b"), step("c")]}], "final": step("f")})
    assert W.successors(graph, "0.0") == ["1"]      # a parallel member: to the final
    assert W.successors(graph, "0.1.0") == ["0.1.1"]
    assert W.successors(graph, "1") == []


def test_a_step_gets_its_input_before_its_own_arguments() -> None:
    args, kwargs = W.step_input(step("s", "own"), ["previous"], {"k": 1})
    assert protocol.unpack(args) == ["previous", "own"] and protocol.unpack(kwargs) == {"k": 1}
    args, _ = W.step_input(step("s", "own"), None, None)
    assert protocol.unpack(args) == ["own"]
