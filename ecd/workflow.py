"""Workflow graphs: pipeline, parallel and funnel over socket calls, and what runs next.

Pure logic on the graph a client sent in FLOW (already shape-checked by the codec). A graph is
made of nested maps:

* a **step** ``{"call": socket, "args": bytes, "kwargs": bytes}``: one call; when it gets an
  input (the previous result) that input is its first positional argument, before its own;
* ``{"pipeline": [node, ...]}``: nodes one after the other, each given the previous one's
  result; its result is the last node's;
* ``{"parallel": [node, ...]}``: nodes at once, each given the same input; its result is the
  list of their results, in order;
* ``{"funnel": [node, ...], "final": node}``: the nodes in parallel, then ``final`` given the
  list of their results (a pipeline of a parallel and ``final``; without ``final``, a parallel).

:func:`normalize` turns funnels into pipelines. Every node has a **path**: ``""`` for the whole
graph, ``"0"``, ``"1"``, ... for its members, ``"1.0"`` for the first member of the second, and
so on. A workflow's progress is the map ``done`` of step path -> result (msgpack bytes): which
steps ended and what they returned. Everything else follows from it: :func:`advance` says what
starts when a step ends, :func:`value` what a structure returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import protocol

from .errors import InvalidName

__all__ = ["STEP", "PIPELINE", "PARALLEL", "Step", "advance", "first_steps", "kind", "node_at",
           "normalize", "steps", "successors", "value"]

STEP = "call"
PIPELINE = "pipeline"
PARALLEL = "parallel"
FUNNEL = "funnel"

#: A step to start: (path, step node).
Step = tuple[str, dict[str, Any]]


def kind(node: dict[str, Any]) -> str:
    """``call``, ``pipeline`` or ``parallel`` (of a normalized node)."""
    if STEP in node:
        return STEP
    return PIPELINE if PIPELINE in node else PARALLEL


def normalize(graph: dict[str, Any]) -> dict[str, Any]:
    """The graph with funnels written as pipelines (``[parallel(tasks), final]``), and a
    one-member pipeline or parallel kept as it is (its result is still a list for parallel)."""
    if STEP in graph:
        return {STEP: graph[STEP], "args": graph["args"], "kwargs": graph["kwargs"]}
    if FUNNEL in graph:
        tasks = {PARALLEL: [normalize(member) for member in graph[FUNNEL]]}
        final = graph.get("final")
        return tasks if final is None else {PIPELINE: [tasks, normalize(final)], "funnel": True}
    name = PIPELINE if PIPELINE in graph else PARALLEL
    if name not in graph:
        raise InvalidName("a workflow node must be a call, pipeline, parallel or funnel")
    return {name: [normalize(member) for member in graph[name]]}


def _child(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


def _parent(path: str) -> tuple[str, int]:
    head, _, last = path.rpartition(".")
    return head, int(last)


def node_at(graph: dict[str, Any], path: str) -> dict[str, Any]:
    node = graph
    for part in path.split(".") if path else ():
        node = node[kind(node)][int(part)]
    return node


def steps(graph: dict[str, Any], path: str = "") -> Iterator[Step]:
    """Every step of the graph, depth first, with its path."""
    stack = [(path, graph)]
    while stack:
        at, node = stack.pop()
        if STEP in node:
            yield at, node
            continue
        members = node[kind(node)]
        stack.extend((_child(at, i), member) for i, member in reversed(list(enumerate(members))))


def first_steps(node: dict[str, Any], path: str) -> list[Step]:
    """The steps that start when ``node`` (at ``path``) starts."""
    out: list[Step] = []
    stack = [(path, node)]
    while stack:
        at, current = stack.pop()
        name = kind(current)
        if name == STEP:
            out.append((at, current))
        elif name == PIPELINE:
            stack.append((_child(at, 0), current[PIPELINE][0]))
        else:
            stack.extend((_child(at, i), m) for i, m in reversed(list(enumerate(current[PARALLEL]))))
    return out


def complete(graph: dict[str, Any], done: dict[str, bytes], path: str) -> bool:
    """Has the node at ``path`` ended (every step it needs ended)?"""
    node = node_at(graph, path)
    name = kind(node)
    if name == STEP:
        return path in done
    if name == PIPELINE:
        return complete(graph, done, _child(path, len(node[PIPELINE]) - 1))
    return all(complete(graph, done, _child(path, i)) for i in range(len(node[PARALLEL])))


def value(graph: dict[str, Any], done: dict[str, bytes], path: str = "") -> bytes:
    """The result (msgpack bytes) of the node at ``path``, which has ended."""
    node = node_at(graph, path)
    name = kind(node)
    if name == STEP:
        return done[path]
    if name == PIPELINE:
        return value(graph, done, _child(path, len(node[PIPELINE]) - 1))
    return protocol.pack_array([value(graph, done, _child(path, i)) for i in range(len(node[PARALLEL]))])


def advance(graph: dict[str, Any], done: dict[str, bytes], path: str) -> tuple[list[Step], bytes | None, str]:
    """Step ``path`` ended (its result is in ``done``). Returns ``(steps, final, input_path)``:
    the steps to start now, all given the result of the node at ``input_path``; or, once the
    whole graph ended, no steps and its result ``final``."""
    at = path
    while at:
        parent_path, index = _parent(at)
        parent = node_at(graph, parent_path)
        if kind(parent) == PIPELINE:
            members = parent[PIPELINE]
            if index + 1 < len(members):
                nxt = _child(parent_path, index + 1)
                return first_steps(members[index + 1], nxt), None, at
        elif not complete(graph, done, parent_path):
            return [], None, at  # a parallel whose other members still run
        at = parent_path
    return [], value(graph, done, ""), ""


def successors(graph: dict[str, Any], path: str) -> list[str]:
    """Paths of the steps that start once the node at ``path`` (and any parallel around it)
    ended: what its result flows into, for the call graph."""
    at = path
    while at:
        parent_path, index = _parent(at)
        parent = node_at(graph, parent_path)
        if kind(parent) == PIPELINE and index + 1 < len(parent[PIPELINE]):
            nxt = _child(parent_path, index + 1)
            return [p for p, _ in first_steps(parent[PIPELINE][index + 1], nxt)]
        at = parent_path
    return []


def step_input(step: dict[str, Any], given: list[Any] | None, given_kwargs: dict[str, Any] | None) -> tuple[bytes, bytes]:
    """A step's call arguments: what it is given (the previous result, or the workflow's input)
    first, then its own bound arguments."""
    args = protocol.unpack(step["args"])
    kwargs = protocol.unpack(step["kwargs"])
    if given:
        args = [*given, *args]
    if given_kwargs:
        kwargs = {**given_kwargs, **kwargs}
    return protocol.pack(args), protocol.pack(kwargs)


def label(graph: dict[str, Any]) -> str:
    """What the workflow is, for listings: ``funnel``, ``pipeline``, ``parallel`` or ``call``."""
    if graph.get("funnel"):
        return FUNNEL
    return kind(graph)
