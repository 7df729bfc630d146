"""Exceptions raised inside the ecd daemon.

Every error the daemon raises on purpose derives from :class:`EcdError`::

    EcdError
    ├── ConfigError            bad command line, config file or environment
    ├── TopologyError          the topology store refused an operation
    │   ├── NotFound           an object named in a request does not exist
    │   ├── AlreadyExists      an object with that name exists already
    │   ├── InvalidName        a name or field fails validation
    │   ├── StillReferenced    deleting it would orphan other objects
    │   ├── KeyRefused         a node registers a key that is revoked, or not the one registered
    │   └── StoreUnavailable   the database cannot be reached
    ├── RepoError              a processor's code cannot be cloned, installed or imported
    ├── WalError               the write-ahead log failed
    │   ├── CommitFailed       a batch could not be made durable (never acknowledged)
    │   └── CorruptRecord      a record failed its checksum
    ├── WorkerError            a worker process could not be started or talked to
    ├── PeerUnreachable        a mesh member named in a request cannot be reached
    ├── NodeUnavailable        the node takes no new work now (stopping, draining)
    ├── QueueFull              a queue is at its max_length (back-pressure)
    ├── BadRequest             a message that is no request (a reply sent to the node)
    └── AccessError            a request is not allowed
        ├── Unauthorized       the caller is not logged in (no session for its key), or the login failed
        └── Forbidden          the caller lacks the right the request needs

Each carries a short, user-facing message; ``code`` maps it onto a protocol error code.
"""

from __future__ import annotations


class EcdError(Exception):
    """Base class of every error the daemon raises on purpose."""

    code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(EcdError):
    """The command line, config file or environment is invalid."""

    code = 400


class TopologyError(EcdError):
    """The topology store refused an operation."""

    code = 422


class NotFound(TopologyError):
    """An object named in a request does not exist."""

    code = 404


class AlreadyExists(TopologyError):
    """An object with the same name exists already."""

    code = 409


class InvalidName(TopologyError):
    """A name or field value fails validation."""

    code = 422


class StillReferenced(TopologyError):
    """The object is referenced by others and cannot be deleted."""

    code = 409


class KeyRefused(TopologyError):
    """A node's own registration carries a key an operator revoked or replaced."""

    code = 409


class StoreUnavailable(TopologyError):
    """The topology database cannot be reached."""

    code = 503


class RepoError(EcdError):
    """A processor's repository cannot be cloned, installed or imported."""

    code = 424


class WalError(EcdError):
    """The write-ahead log failed."""

    code = 500


class CommitFailed(WalError):
    """A batch of records could not be made durable; nothing in it is acknowledged."""

    code = 507


class CorruptRecord(WalError):
    """A log record failed its checksum."""

    code = 500


class WorkerError(EcdError):
    """A worker process could not be started or talked to."""

    code = 500


class PeerUnreachable(EcdError):
    """A request names a mesh member this node cannot reach right now."""

    code = 503


class NodeUnavailable(EcdError):
    """The node takes no new work now (it is stopping, or refuses for want of replicas)."""

    code = 503


class QueueFull(EcdError):
    """A queue holds ``max_length`` calls already: new calls are refused until it drains."""

    code = 429


class BadRequest(EcdError):
    """A message that is not a request reached the node's request handler."""

    code = 400


class AccessError(EcdError):
    """A request is not allowed (base of the two answers below)."""

    code = 401


class Unauthorized(AccessError):
    """The caller is not authenticated: no session for its key, an expired one, or a failed login."""

    code = 401


class Forbidden(AccessError):
    """The caller is authenticated but lacks the right the request needs."""

    code = 403

    def __init__(self, message: str, right: str = "") -> None:
        super().__init__(message)
        self.right = right
