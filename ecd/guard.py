"""The node's gate: the principal of each request, checked against :data:`ecd.access.RULES`.

Every client request passes :meth:`Guard.admit` before it is handled: the principal comes from the
transport (:class:`~ecd.server.Peer`: the ipc socket, or the connection's CURVE key looked up in
the topology's sessions and node keys), the rule from the request's name; a refusal is written to
the audit log and raised (401 or 403). Peer messages are attributed by :meth:`Guard.member_of`:
only a key registered for a node of the topology is a member.

Resolved principals are kept per topology (a new topology, e.g. a logout or a right removed,
drops them all), so the hot path costs two dict lookups and an expiry check.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import protocol

from . import access
from .access import Principal
from .audit import AuditLog
from .errors import AccessError, Forbidden

#: Principals kept per topology at most (users with sessions and member nodes).
MAX_CACHED = 100_000
#: Largest body a key that is no member's and not logged in may send (a PING, a login).
PRE_LOGIN_BYTES = 64 * 1024


class Guard:
    """Resolves and authorizes the requests of one node."""

    def __init__(self, *, insecure: bool, topology: Callable[[], Any], audit: AuditLog,
                 clock: Callable[[], float] = time.time) -> None:
        self.insecure = insecure
        self.topology = topology
        self.audit = audit
        self.clock = clock
        self._seen: Any = None
        self._node_keys: dict[str, str] = {}
        self._principals: dict[str, Principal] = {}
        self.denied = 0

    def _fresh(self) -> Any:
        topology = self.topology()
        if topology is not self._seen:
            self._seen = topology
            self._node_keys = {n.key: n.name for n in topology.nodes.values() if getattr(n, "key", "")}
            self._principals = {}
        return topology

    def node_keys(self) -> dict[str, str]:
        """Key -> node name of every node registered with a key."""
        self._fresh()
        return self._node_keys

    def member_of(self, key: str) -> str | None:
        """The name of the node whose registered key is ``key`` (None: not a member's key)."""
        self._fresh()
        return self._node_keys.get(key)

    def principal(self, peer: Any) -> Principal:
        if peer.local:
            return access.LOCAL_ADMIN
        if self.insecure:
            return access.INSECURE_ADMIN
        if not peer.key:  # never on a secure node's tcp (no CURVE, no message): fail closed anyway
            return access.Principal(access.ANONYMOUS, why="no key")
        return self.principal_of_key(peer.key)

    def body_limit(self, key: str) -> int:
        """The largest body a CURVE connection with ``key`` may send: any size for a member or a
        logged-in user, :data:`PRE_LOGIN_BYTES` for anyone else (enough for PING and a login),
        checked before decoding (a stranger's message costs no memory)."""
        if self.principal_of_key(key).kind in (access.USER, access.NODE):
            return protocol.MAX_MESSAGE_BYTES
        return PRE_LOGIN_BYTES

    def principal_of_key(self, key: str) -> Principal:
        topology = self._fresh()
        now = self.clock()
        found = self._principals.get(key)
        if found is not None and (found.kind != access.USER or found.expires > now):
            return found
        found = access.resolve(topology, key, now, self._node_keys)
        if found.kind in (access.USER, access.NODE) and len(self._principals) < MAX_CACHED:
            self._principals[key] = found
        return found

    def admit(self, peer: Any, request: str, obj: Callable[[], str] = str) -> Principal:
        """The principal of ``peer``'s request, if it may make it; else audit (``obj()`` names what
        it was about: worked out only then) and raise."""
        principal = self.principal(peer)
        rule = access.rule_for(request)
        if rule is not None and rule.public:
            return principal
        try:
            access.authorize(principal, request, rule)
        except AccessError as exc:
            self.deny(principal, request, obj(), exc)
            raise
        return principal

    def require(self, principal: Principal, rights: tuple[str, ...], request: str, obj: str = "",
                why: str = "") -> None:
        """Refuse (audited, 403) unless ``principal`` holds one of ``rights``."""
        if principal.has_any(rights):
            return
        error = Forbidden(f"permission denied: {principal.label} lacks {rights[0]}{why}", rights[0])
        self.deny(principal, request, obj, error)
        raise error

    def deny(self, principal: Principal, request: str, obj: str, error: BaseException) -> None:
        """Write the refusal ``error`` to the audit log (once: an error already written is not)."""
        if getattr(error, "audited", False):
            return
        error.audited = True  # type: ignore[attr-defined]
        self.denied += 1
        code = getattr(error, "code", 403)
        self.audit.record(user=principal.label, key=principal.key, op=request.removeprefix("admin:"), object=obj,
                          outcome=f"denied ({code}): {getattr(error, 'message', error)}")

    def status(self) -> dict[str, Any]:
        return {"insecure": self.insecure, "denied": self.denied, "audit": self.audit.status(),
                "members_registered": len(self.node_keys())}
