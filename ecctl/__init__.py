"""ecctl: client library and command line of the ElasticCode ecd daemon.

    >>> from ecctl import Function
    >>> Function("add")(1, 2).get()          # doctest: +SKIP
    3
"""

from .client import AsyncResult, Client, Function, Signature, Socket
from .errors import CallTimeout, EcctlError, NoDaemon, RemoteError, ServerError

__all__ = [
    "AsyncResult",
    "CallTimeout",
    "Client",
    "EcctlError",
    "Function",
    "NoDaemon",
    "RemoteError",
    "ServerError",
    "Signature",
    "Socket",
]
