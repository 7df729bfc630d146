"""Exceptions raised by the ecctl client.

Every error the client raises on purpose derives from :class:`EcctlError`::

    EcctlError
    ├── NoDaemon        nothing answers at the endpoint (at any of them, when several)
    ├── RemoteError     the user's code raised (carries type, message, traceback, call id)
    ├── ServerError     the daemon refused a request (carries the protocol error code)
    ├── CallTimeout     the deadline passed (also a :class:`TimeoutError`)
    ├── SpecError       a network file (``ecctl apply -f``) cannot be read or is no network spec
    └── UnknownServerKey  no key is known for a tcp endpoint (``ecctl trust``)
"""

from __future__ import annotations

from typing import Any


class EcctlError(Exception):
    """Base class of every error ecctl raises on purpose."""


class NoDaemon(EcctlError):
    """No daemon answers at ``endpoint`` (with several endpoints: at none of them, and
    ``endpoint`` is the comma-separated list)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"no daemon at {endpoint}")
        self.endpoint = endpoint


class RemoteError(EcctlError):
    """The user's code raised while running a call; ``str()`` is ``"<Type>: <message>"``.

    For a workflow, ``call_id`` is the failed step's call, ``step`` its position in the graph
    (``"0.2.1"``) and ``workflow_id`` the workflow's id."""

    def __init__(self, type: str, message: str, traceback: str = "", call_id: str = "", *,
                 step: str = "", workflow_id: str = "") -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.traceback = traceback
        self.call_id = call_id
        self.step = step
        self.workflow_id = workflow_id


class ServerError(EcctlError):
    """The daemon refused a request (unknown socket, bad arguments, ...)."""

    def __init__(self, code: int, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = dict(detail or {})


class CallTimeout(EcctlError, TimeoutError):
    """A request or a call did not complete before its deadline."""

    def __init__(self, message: str, call_id: str = "") -> None:
        super().__init__(message)
        self.call_id = call_id


class SpecError(EcctlError):
    """A network file cannot be read, parsed, or is not a network spec; ``str()`` names the file."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class UnknownServerKey(EcctlError):
    """No key is known for a tcp endpoint: the client cannot check who answers there."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(
            f"the key of the node at {endpoint} is unknown: ask its operator for `ecd keys show`, "
            f"then run `ecctl trust {endpoint} KEY` (or give --server-key KEY)")
        self.endpoint = endpoint
