"""Who may do what: the principal behind a request, and the one authorization table.

Pure logic (no I/O, no clock of its own). The node resolves the **principal** of every request
from its transport: the local ipc socket is the local administrator (whoever can open it, like
docker.sock); on CURVE tcp, the ZAP ``User-Id`` of the connection (the client's public key) is
looked up in the login sessions of the topology; with ``--insecure`` every tcp client is the
administrator. Nothing in a frame's content ever names the caller.

:data:`RULES` maps every request (``CALL``, ``GET``, ..., ``admin:<op>``) to what it needs; a
request with no rule is refused (deny by default). :func:`authorize` raises
:class:`~ecd.errors.Unauthorized` (401: not logged in) or :class:`~ecd.errors.Forbidden` (403:
``permission denied: joe lacks ADD_PROCESSOR``). SPEC.md, "Authorization", prints the same table;
a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from protocol import ALL

from .errors import BadRequest, Forbidden, NotFound, Unauthorized

__all__ = ["ANONYMOUS", "INSECURE", "LOCAL", "NODE", "RULES", "USER", "Principal", "Rule", "authorize",
           "can_see_call", "change_right", "effective_rights", "resolve", "rule_for"]

LOCAL = "local"          # the ipc socket: the local administrator
INSECURE = "insecure"    # a tcp client of a node run with --insecure: no authentication at all
USER = "user"            # a logged-in user (a session for the connection's CURVE key)
NODE = "node"            # a mesh member's key: peer messages only
ANONYMOUS = "anonymous"  # a CURVE key with no (valid) session

#: Network kinds of the admin ops and the plural their listing uses (ecd/admin.py's KINDS).
NETWORK_KINDS = {"queue": "queues", "node": "nodes", "processor": "processors", "socket": "sockets",
                 "plug": "plugs", "deployment": "deployments", "flow": "flows"}


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who sent a request. ``name`` is the user name (``local`` / ``insecure`` for those, the node
    name for a member, "" for an anonymous key); ``why`` says why an anonymous key is not a user."""

    kind: str
    name: str = ""
    key: str = ""
    rights: frozenset[str] = frozenset()
    roles: tuple[str, ...] = ()
    expires: float = 0.0
    why: str = ""

    @property
    def authenticated(self) -> bool:
        return self.kind in (LOCAL, INSECURE, USER)

    def has(self, right: str) -> bool:
        return ALL in self.rights or right in self.rights

    def has_any(self, rights: Iterable[str]) -> bool:
        return ALL in self.rights or any(right in self.rights for right in rights)

    @property
    def label(self) -> str:
        """How audit lines and messages name it (a member's key as ``node NAME``: never a user's)."""
        if self.kind == NODE:
            return f"node {self.name}"
        return self.name or self.kind


LOCAL_ADMIN = Principal(LOCAL, "local", rights=frozenset({ALL}))
INSECURE_ADMIN = Principal(INSECURE, "insecure", rights=frozenset({ALL}))


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a request needs: one of ``any_of`` (ALL always does), or nothing but a login
    (``login``), or nothing at all (``public``). ``owner``: the caller's own calls need no right
    besides ``any_of``; other users' calls need READ (and are not found without it).
    ``per_change``: every change the request makes needs its own right (``apply``)."""

    any_of: tuple[str, ...] = ()
    public: bool = False
    login: bool = False
    owner: bool = False
    per_change: bool = False

    def describe(self) -> str:
        if self.public:
            return "nobody (no login needed)"
        parts = [" or ".join(self.any_of)] if self.any_of else []
        if self.login and not self.any_of:
            parts.append("a login")
        if self.owner:
            parts.append("own calls; READ for other users' calls")
        if self.per_change:
            parts.append("the right of every change it makes")
        return "; ".join(parts)


def _rules() -> dict[str, Rule]:
    rules: dict[str, Rule] = {
        "PING": Rule(public=True),
        "CALL": Rule(("RUN_TASK",)),
        "CALLS": Rule(("RUN_TASK",)),
        "FLOW": Rule(("RUN_TASK",)),
        "STREAM": Rule(("RUN_TASK",), owner=True),
        "GET": Rule(login=True, owner=True),
        "LISTEN": Rule(("READ_LOG",)),
        "admin:login": Rule(public=True),
        "admin:logout": Rule(login=True),
        "admin:whoami": Rule(login=True),
        "admin:mesh_keys": Rule(login=True),
        "admin:status": Rule(("READ_NODE", "READ")),
        "admin:export": Rule(("READ",)),
        "admin:apply": Rule(login=True, per_change=True),
        "admin:ls_calls": Rule(login=True, owner=True),
        "admin:ls_call": Rule(login=True, owner=True),
        "admin:node_drain": Rule(("UPDATE_NODE", "UPDATE")),
        "admin:node_undrain": Rule(("UPDATE_NODE", "UPDATE")),
        "admin:proc_pause": Rule(("PAUSE_PROCESSOR",)),
        "admin:proc_resume": Rule(("RESUME_PROCESSOR",)),
        "admin:proc_start": Rule(("START_PROCESSOR",)),
        "admin:proc_stop": Rule(("STOP_PROCESSOR",)),
        "admin:proc_restart": Rule(("START_PROCESSOR",)),
        "admin:proc_remove": Rule(("DELETE_PROCESSOR", "DELETE")),
        "admin:add_user": Rule(("ADD_USER", "CREATE")),
        "admin:update_user": Rule(("UPDATE_USER", "UPDATE")),
        "admin:delete_user": Rule(("DELETE_USER", "DELETE")),
        "admin:ls_users": Rule(("LS_USERS", "READ_USER", "READ")),
        "admin:ls_user": Rule(("LS_USER", "READ_USER", "READ")),
        "admin:add_role": Rule(("ADD_ROLE", "CREATE")),
        "admin:delete_role": Rule(("DELETE_ROLE", "DELETE")),
        "admin:ls_roles": Rule(("LS_ROLES", "READ_ROLE", "READ")),
        "admin:add_privilege": Rule(("ADD_PRIVILEGE", "CREATE")),
        "admin:delete_privilege": Rule(("DELETE_PRIVILEGE", "DELETE")),
        "admin:ls_audit": Rule(("READ_LOG",)),
    }
    for kind, plural in NETWORK_KINDS.items():
        upper = kind.upper()
        edit = ("EDIT_PROCESSOR_CONFIG", "EDIT_PROCESSOR_CODE") if kind == "processor" else ()  # per field: admin.py
        rules[f"admin:add_{kind}"] = Rule((f"ADD_{upper}", "CREATE"))
        rules[f"admin:update_{kind}"] = Rule((f"UPDATE_{upper}", "UPDATE", *edit))
        rules[f"admin:delete_{kind}"] = Rule((f"DELETE_{upper}", "DELETE"))
        rules[f"admin:ls_{plural}"] = Rule((f"LS_{plural.upper()}", f"READ_{upper}", "READ"))
    return rules


#: Request -> what it needs. Requests are the client commands (``CALL``, ``GET``...) and the
#: admin ops (``admin:<op>``). Anything not listed is refused.
RULES: Mapping[str, Rule] = _rules()


def rule_for(request: str) -> Rule | None:
    return RULES.get(request)


def authorize(principal: Principal, request: str, rule: Rule | None) -> None:
    """Raise Unauthorized (401) or Forbidden (403) unless ``principal`` may make ``request``."""
    if rule is not None and rule.public:
        return
    if not principal.authenticated:
        raise Unauthorized(_not_logged_in(principal))
    if rule is None:  # deny by default: nothing without a rule is ever handled
        if request.startswith("admin:"):
            raise NotFound(f"unknown admin op '{request[6:]}'")
        raise BadRequest(f"{request} is not a request")
    if rule.any_of and not principal.has_any(rule.any_of):
        raise Forbidden(f"permission denied: {principal.label} lacks {rule.any_of[0]}", rule.any_of[0])


def _not_logged_in(principal: Principal) -> str:
    if principal.kind == NODE:
        return f"the key of node {principal.name} is for the mesh, not for requests: log in with a client key"
    return f"{principal.why or 'not logged in'}: run `ecctl login` (or give the client a user and password)"


def can_see_call(principal: Principal, record: Mapping[str, Any]) -> bool:
    """Its own call, or READ (another user's call is "not found" to it)."""
    return principal.has("READ") or (principal.kind == USER and record.get("user") == principal.name)


def change_right(change: Mapping[str, Any]) -> tuple[str, str]:
    """The right (and the generic one) an ``apply`` change needs: ADD_/UPDATE_/DELETE_<KIND>."""
    family = {"add": ("ADD", "CREATE"), "update": ("UPDATE", "UPDATE"), "delete": ("DELETE", "DELETE")}
    prefix, generic = family[str(change.get("action"))]
    return f"{prefix}_{str(change.get('kind')).upper()}", generic


def effective_rights(topology: Any, user: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """A user's rights (direct and through its roles) and its roles."""
    found = topology.users.get(user)
    if found is None:
        return frozenset(), ()
    rights = set(found.rights)
    for role in found.roles:
        held = topology.roles.get(role)
        if held is not None:
            rights.update(held.rights)
    return frozenset(rights), tuple(found.roles)


def resolve(topology: Any, key: str, now: float, node_keys: Mapping[str, str]) -> Principal:
    """The principal of a CURVE connection whose client key is ``key``: a mesh member (its key is
    registered for a node, ``node_keys``: key -> node name), a logged-in user, or anonymous."""
    node = node_keys.get(key)
    if node is not None:
        return Principal(NODE, node, key)
    session = topology.sessions.get(key)
    if session is None:
        return Principal(ANONYMOUS, "", key, why="not logged in")
    if session.expires <= now:
        return Principal(ANONYMOUS, "", key, why=f"the login of {session.user} expired")
    user = topology.users.get(session.user)
    if user is None:
        return Principal(ANONYMOUS, "", key, why=f"user {session.user} no longer exists")
    if not user.enabled:
        return Principal(ANONYMOUS, "", key, why=f"user {session.user} is disabled")
    rights, roles = effective_rights(topology, session.user)
    return Principal(USER, session.user, key, rights=rights, roles=roles, expires=session.expires)
