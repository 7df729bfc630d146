"""The network declared in Python: ``@processor``, ``@socket`` and ``@plug`` decorators on plain
classes and functions, and ``Processor(...)``, ``Socket(...)``, ``Plug(...)`` objects.

Both only describe topology objects and make the network match over ZeroMQ (one ``apply`` per
declaration: objects are created when missing and updated when they differ, so running the
same definitions twice changes nothing). No code travels: the function bodies under the
decorators are never sent anywhere; the daemons run the functions of the processor's git
repository, by name.

    @processor(name="proc1", gitrepo="file:///srv/repos/sample.git", module="sample.tasks", concurrency=2)
    class Sample(ProcessorBase):
        @plug(name="p1", target="sample.tasks.do_this", queue={"name": "q1"})
        @socket(name="sample.tasks.do_something", queue={"name": "q1"})
        def do_something(message): ...

    Sample.do_something("hi").get()      # a socket declared so is a Function: calling it runs it

A ``@socket`` inside a class belongs to the class's ``@processor`` (unless it names another)
and is declared when the class is; one outside a class names its ``processor`` and is declared
at once. ``@plug`` goes above ``@socket``: the socket is its source. ``queue`` is a name or a map
of queue fields (``{"name": "q1", "type": "direct", "max_length": 1000}``); a missing queue is
made. The seed's keywords that have no meaning here (``user``, ``beat``, ``hostname``,
``arguments``, ``password``, ``expires``) are accepted and ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .client import Client, Function

__all__ = ["Plug", "Processor", "ProcessorBase", "Socket", "plug", "processor", "socket"]

log = logging.getLogger(__name__)

#: Keywords of the seed's API that mean nothing to ElasticCode's topology: accepted, ignored.
IGNORED = frozenset({"user", "beat", "hostname", "arguments", "password", "expires", "deploy", "cpus",
                     "modulepath", "endpoint", "api", "requested_status", "workers"})
_PROCESSOR_FIELDS = frozenset({"gitrepo", "module", "branch", "commit", "tag", "requirements", "concurrency",
                               "retries", "retry_delay", "timelimit", "rate_limit", "description", "enabled",
                               "paused"})
_SOCKET_FIELDS = frozenset({"interval", "cron", "catch_up", "description"})
_PLUG_FIELDS = frozenset({"argument", "type", "description"})
_QUEUE_FIELDS = frozenset({"type", "durable", "max_length", "message_ttl", "description"})


def _split(kind: str, options: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    unknown = set(options) - allowed - IGNORED
    if unknown:
        raise TypeError(f"unknown {kind} field(s): {', '.join(sorted(unknown))}")
    ignored = set(options) & IGNORED
    if ignored:
        log.debug("%s: ignoring %s (not used by ElasticCode)", kind, ", ".join(sorted(ignored)))
    return {key: value for key, value in options.items() if key in allowed and value is not None}


def _queue(queue: Any) -> tuple[str, dict[str, Any]]:
    """A queue given as a name or a map of fields: its name and the fields to declare."""
    if isinstance(queue, str):
        return queue, {}
    if isinstance(queue, Mapping) and isinstance(queue.get("name"), str):
        return queue["name"], _split("queue", {k: v for k, v in queue.items() if k != "name"}, _QUEUE_FIELDS)
    raise TypeError(f"queue must be a name or a map with a 'name', not {queue!r}")


def _name_of(value: Any, what: str) -> str:
    """The name of a referenced object: a str, or a declared object (or decorated class)."""
    if isinstance(value, str):
        return value
    name = getattr(value, "_ec_processor", None) or getattr(value, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"{what} must be a name or a declared {what}, not {value!r}")


class _Spec:
    """The objects of one declaration, as an ``apply`` spec."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, section: str, name: str, fields: dict[str, Any]) -> None:
        entry = self.sections.setdefault(section, {}).setdefault(name, {})
        entry.update(fields)

    def queue(self, queue: Any) -> str:
        name, fields = _queue(queue)
        self.add("queues", name, fields)
        return name

    def apply(self, client: Client) -> dict[str, Any]:
        return client.apply({section: dict(items) for section, items in self.sections.items()})


class ProcessorBase:
    """Base class of classes declared with :func:`processor` (optional: any class will do)."""


class Processor:
    """A processor: declared (created or updated) on construction."""

    def __init__(self, name: str, *, client: Client | None = None, **fields: Any) -> None:
        self.name = name
        self.fields = _split("processor", fields, _PROCESSOR_FIELDS)
        self.client = client or Client()
        spec = _Spec()
        spec.add("processors", name, self.fields)
        self.changes = spec.apply(self.client)["changes"]

    @property
    def processor(self) -> dict[str, Any]:
        """The processor as stored (with its status on the node that answers)."""
        return _stored(self.client, "processors", self.name)

    def __repr__(self) -> str:
        return f"Processor({self.name!r})"


def _stored(client: Client, kinds: str, name: str) -> dict[str, Any]:
    for item in client.ls(kinds):
        if item.get("name") == name:
            return item
    raise LookupError(f"no {kinds[:-1]} named {name!r}")


class Socket(Function):
    """A socket: ``Socket("name")`` refers to an existing one (a :class:`Function`);
    ``Socket(name=, processor=, queue=, task=)`` declares it first."""

    def __init__(self, name: str, processor: Any = None, queue: Any = None, task: str | None = None, *,
                 endpoint: str | None = None, client: Client | None = None, function: str | None = None,
                 **fields: Any) -> None:
        super().__init__(name, endpoint=endpoint, client=client)
        self.changes: list[dict[str, Any]] = []
        declared = _split("socket", fields, _SOCKET_FIELDS)
        if processor is None and queue is None and task is None and function is None and not declared:
            return  # a reference to an existing socket
        if processor is None or queue is None:
            raise TypeError("declaring a socket needs processor= and queue=")
        spec = _Spec()
        spec.add("sockets", name, {"processor": _name_of(processor, "processor"), "queue": spec.queue(queue),
                                   "function": function or task or name.rsplit(".", 1)[-1], **declared})
        self.changes = spec.apply(self.client)["changes"]

    @property
    def socket(self) -> dict[str, Any]:
        """The socket as stored."""
        return _stored(self.client, "sockets", self.name)


class Plug:
    """A plug from ``source`` to ``target`` (sockets, by name or object): declared on construction."""

    def __init__(self, name: str, source: Any, target: Any, queue: Any, *, client: Client | None = None,
                 processor: Any = None, **fields: Any) -> None:
        self.name = name
        self.source = _name_of(source, "socket")
        self.target = _name_of(target, "socket")
        self.client = client or getattr(source, "_client", None) or Client()
        spec = _Spec()
        spec.add("plugs", name, {"source": self.source, "target": self.target, "queue": spec.queue(queue),
                                 **_split("plug", fields, _PLUG_FIELDS)})
        self.changes = spec.apply(self.client)["changes"]

    @property
    def plug(self) -> dict[str, Any]:
        """The plug as stored."""
        return _stored(self.client, "plugs", self.name)

    def __repr__(self) -> str:
        return f"Plug({self.name!r}: {self.source} -> {self.target})"


# ------------------------------------------------------------------------------ decorators


class DeclaredSocket(Function):
    """What ``@socket`` makes of a function: the remote socket (call it to run it), carrying its
    declaration until its class's ``@processor`` (or, outside a class, the decorator) sends it."""

    def __init__(self, name: str, fields: dict[str, Any], queue: Any, processor: Any, function: str,
                 client: Client | None, doc: str | None) -> None:
        super().__init__(name, client=client)
        self.fields, self.queue, self.processor_ref, self.function = fields, queue, processor, function
        self.plugs: list[tuple[str, Any, Any, dict[str, Any]]] = []
        self.declared = False
        self.__doc__ = doc

    def declare(self, spec: _Spec, processor: str | None) -> None:
        """Add this socket and its plugs to ``spec`` (``processor``: its class's, if any)."""
        owner = self.processor_ref if self.processor_ref is not None else processor
        if owner is None:
            raise TypeError(f"socket {self.name!r} names no processor (processor=, or a class under @processor)")
        spec.add("sockets", self.name, {"processor": _name_of(owner, "processor"), "queue": spec.queue(self.queue),
                                        "function": self.function, **self.fields})
        for name, target, queue, fields in self.plugs:
            spec.add("plugs", name, {"source": self.name, "target": _name_of(target, "socket"),
                                     "queue": spec.queue(queue), **fields})

    def send(self) -> None:
        """Declare it now (a socket outside any ``@processor`` class)."""
        spec = _Spec()
        self.declare(spec, None)
        spec.apply(self.client)
        self.declared = True


def _in_class(func: Callable[..., Any]) -> bool:
    """Is ``func`` defined in a class body (``Class.func``, not ``outer.<locals>.func``)?"""
    head, _, _ = getattr(func, "__qualname__", "").rpartition(".")
    return bool(head) and not head.endswith("<locals>")


def socket(name: str, *, queue: Any, processor: Any = None, task: str | None = None, client: Client | None = None,
           **fields: Any) -> Callable[[Callable[..., Any]], DeclaredSocket]:
    """Declare a socket for the decorated function (its name is the function's unless ``task``
    says otherwise); the decorated name becomes the socket (a :class:`Function`)."""
    declared = _split("socket", fields, _SOCKET_FIELDS)

    def wrap(func: Callable[..., Any]) -> DeclaredSocket:
        target = DeclaredSocket(name, declared, queue, processor, task or func.__name__, client, func.__doc__)
        if not _in_class(func):
            if processor is None:
                raise TypeError(f"socket {name!r} outside a @processor class needs processor=")
            target.send()
        return target

    return wrap


def plug(name: str, *, target: Any, queue: Any, **fields: Any) -> Callable[[DeclaredSocket], DeclaredSocket]:
    """Declare a plug from the socket below it (``@plug`` above ``@socket``) to ``target``."""
    declared = _split("plug", fields, _PLUG_FIELDS)

    def wrap(source: DeclaredSocket) -> DeclaredSocket:
        if not isinstance(source, DeclaredSocket):
            raise TypeError("@plug goes above @socket: its source is the socket declared below it")
        source.plugs.append((name, target, queue, declared))
        if source.declared:  # a socket outside any class was sent already: send it with the plug
            source.send()
        return source

    return wrap


def processor(name: str, *, client: Client | None = None, **fields: Any) -> Callable[[type], type]:
    """Declare a processor for the decorated class, then the sockets (and their plugs) declared
    in it with ``@socket``, in one ``apply``."""
    declared = _split("processor", fields, _PROCESSOR_FIELDS)

    def wrap(cls: type) -> type:
        spec = _Spec()
        spec.add("processors", name, declared)
        sockets = [value for value in vars(cls).values() if isinstance(value, DeclaredSocket)]
        for member in sockets:
            member.declare(spec, name)
        apply_with = client or next((s._client for s in sockets if s._client is not None), None) or Client()
        spec.apply(apply_with)
        for member in sockets:
            member.declared = True
            if member._client is None:
                member._client = apply_with
        cls._ec_processor = name  # type: ignore[attr-defined]
        return cls

    return wrap
