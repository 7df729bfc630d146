"""ecctl: client library and command line of the ElasticCode ecd daemon.

    >>> from ecctl import Function
    >>> Function("add")(1, 2).get()          # doctest: +SKIP
    3
"""

from .client import AsyncResult, Client, Function, Signature
from .declare import Plug, Processor, ProcessorBase, Socket, plug, processor, socket
from .errors import CallTimeout, EcctlError, NoDaemon, RemoteError, ServerError, UnknownServerKey
from .workflows import Funnel, Parallel, Pipeline, Workflow, funnel, parallel, pipeline

__all__ = [
    "AsyncResult",
    "CallTimeout",
    "Client",
    "EcctlError",
    "Function",
    "Funnel",
    "NoDaemon",
    "Parallel",
    "Pipeline",
    "Plug",
    "Processor",
    "ProcessorBase",
    "RemoteError",
    "ServerError",
    "Signature",
    "Socket",
    "UnknownServerKey",
    "Workflow",
    "funnel",
    "parallel",
    "pipeline",
    "plug",
    "processor",
    "socket",
]
