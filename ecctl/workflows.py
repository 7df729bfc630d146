"""Workflows: ``pipeline``, ``parallel`` and ``funnel`` over partial signatures, run by the daemons.

    >>> from ecctl import Function, parallel, pipeline, funnel
    >>> do_something = Function("sample.tasks.do_something").p
    >>> flow = pipeline([do_something("One"), parallel([do_something("Two"), do_something("Three")])])
    >>> flow().get(timeout=60)                                      # doctest: +SKIP
    ['Do something: Do something: One Two', 'Do something: Do something: One Three']

A structure is only a description until it is called: calling it (or :meth:`Workflow.delay`)
sends the whole graph to a daemon as one FLOW request and returns an
:class:`~ecctl.client.AsyncResult` as soon as the daemon has the workflow durably. From then
on the daemons run it from their logs, whatever becomes of this process: any process can fetch
the result later by the returned id (``Client().result(id)``).

* ``pipeline(tasks)``: the tasks one after the other; each gets the previous task's result as
  its first argument, before its own bound arguments. Its result is the last task's.
* ``parallel(tasks)``: the tasks at once, each given the same input (inside a pipeline: the
  previous result); its result is the list of their results, in order.
* ``funnel(tasks, final)`` or ``funnel(tasks)(final)``: the tasks in parallel, then ``final``
  given the list of their results; its result is ``final``'s.

Tasks are partial signatures (``Function(name).p(...)``), plain :class:`~ecctl.client.Function`
objects (no bound arguments) or other structures, nested to any depth. A failed step fails the
workflow: ``get`` raises :class:`~ecctl.errors.RemoteError` with the step's error, its call id
(``call_id``), its position (``step``) and the workflow's id (``workflow_id``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import protocol

from .client import AsyncResult, Client, Function, Signature

__all__ = ["Funnel", "Parallel", "Pipeline", "Workflow", "funnel", "graph_of", "parallel", "pipeline"]


def graph_of(task: Any) -> dict[str, Any]:
    """The FLOW graph node of a task: a signature, a function or a structure."""
    if isinstance(task, Workflow):
        return task.graph()
    if isinstance(task, Function):
        task = task.p
    if isinstance(task, Signature):
        return {"call": task.function, "args": protocol.pack(list(task.args)),
                "kwargs": protocol.pack(dict(task.kwargs))}
    raise TypeError(f"a workflow task must be a signature (Function(name).p(...)), a Function or a "
                    f"pipeline/parallel/funnel, not {type(task).__name__}")


def _tasks(tasks: tuple[Any, ...]) -> list[Any]:
    """``f([a, b])`` and ``f(a, b)`` both mean the tasks a and b."""
    if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)):
        tasks = tuple(tasks[0])
    items = list(tasks)
    if not items:
        raise ValueError("a workflow structure needs at least one task")
    for task in items:
        graph_of(task)  # a TypeError now, not when the workflow is sent
    return items


def _client_of(tasks: Iterable[Any]) -> Client | None:
    for task in tasks:
        if isinstance(task, Workflow):
            found = task._client or _client_of(task.members())
        elif isinstance(task, Function):
            found = task.client
        elif isinstance(task, Signature):
            found = task.client
        else:
            found = None
        if found is not None:
            return found
    return None


class Workflow:
    """A structure of tasks; calling it runs the whole graph on the daemons."""

    def __init__(self, tasks: list[Any], *, client: Client | None = None) -> None:
        self.tasks = tasks
        self._client = client

    def members(self) -> list[Any]:
        return list(self.tasks)

    def graph(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def client(self) -> Client:
        """The client the workflow is sent with: the one given, else the first task's."""
        return self._client or _client_of(self.members()) or Client()

    def delay(self, *args: Any, workflow_id: str | None = None, **kwargs: Any) -> AsyncResult:
        """Send the workflow; ``args``/``kwargs`` are the input of its first steps (put before
        their own arguments). Returns once a daemon holds it durably."""
        return self.client.submit_flow(self.graph(), args, kwargs, flow_id=workflow_id or str(uuid.uuid4()))

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.delay(*args, **kwargs)

    def apply(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Send the workflow and wait for its result."""
        return self.delay(*args, **kwargs).get(timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__.lower()}({self.tasks!r})"


class Pipeline(Workflow):
    """Tasks one after the other, each given the previous result."""

    def graph(self) -> dict[str, Any]:
        return {"pipeline": [graph_of(task) for task in self.tasks]}


class Parallel(Workflow):
    """Tasks at once; the result is the list of their results."""

    def graph(self) -> dict[str, Any]:
        return {"parallel": [graph_of(task) for task in self.tasks]}


class Funnel(Workflow):
    """Tasks in parallel, then ``final`` given the list of their results."""

    def __init__(self, tasks: list[Any], final: Any = None, *, client: Client | None = None) -> None:
        super().__init__(tasks, client=client)
        if final is not None:
            graph_of(final)
        self.final = final

    def members(self) -> list[Any]:
        return [*self.tasks, *([self.final] if self.final is not None else [])]

    def graph(self) -> dict[str, Any]:
        return {"funnel": [graph_of(task) for task in self.tasks],
                "final": graph_of(self.final) if self.final is not None else None}

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``funnel(tasks)(final)`` sends the funnel with ``final``; with a final already, the
        arguments are the workflow's input."""
        if self.final is None and len(args) == 1 and not kwargs and _is_task(args[0]):
            return Funnel(self.tasks, args[0], client=self._client).delay()
        return self.delay(*args, **kwargs)

    def __repr__(self) -> str:
        return f"funnel({self.tasks!r}, {self.final!r})"


def _is_task(value: Any) -> bool:
    return isinstance(value, (Workflow, Signature, Function))


def pipeline(*tasks: Any, client: Client | None = None) -> Pipeline:
    """``pipeline([a, b, c])`` (or ``pipeline(a, b, c)``): a, then b given a's result, then c."""
    return Pipeline(_tasks(tasks), client=client)


def parallel(*tasks: Any, client: Client | None = None) -> Parallel:
    """``parallel([a, b])``: a and b at once; the result is ``[a's, b's]``."""
    return Parallel(_tasks(tasks), client=client)


def funnel(tasks: Any, final: Any = None, *, client: Client | None = None) -> Funnel:
    """``funnel([a, b], f)`` or ``funnel([a, b])(f)``: a and b at once, then f given both results."""
    return Funnel(_tasks((tasks,) if isinstance(tasks, (list, tuple)) else (tasks,)), final, client=client)
