"""Admin ops of access: login, logout, whoami, users, roles, privileges, the audit log.

``login`` proves a password once over CURVE and binds the connection's public key to the user for
``--session-ttl`` seconds (a session in the topology, so every node of the mesh knows it); from then
on the key is the user. Passwords are checked and hashed on a thread of their own (argon2id is slow
on purpose), never on the loop or the database thread; failed logins are limited per user and per
key, and few run at once.

A change is answered once this node serves it and, when it takes access away (or gives it), once
every live member of the mesh says in its heartbeats that it serves it too (at most
:data:`PROPAGATE_WAIT` seconds): a logout, a disabled user or a removed right holds on the next
request everywhere. Nobody can give more than they hold: granting or taking a right, giving or
deleting a role, and changing a user who holds rights one lacks need those rights; the checks run
in the change's own transaction (:class:`ecd.accounts.Accounts`), never on a cached topology.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import protocol

from .access import USER, Principal, effective_rights
from .accounts import AccessStore
from .admin import failure
from .errors import EcdError, Forbidden, InvalidName, NodeUnavailable, NotFound, QueueFull, StoreUnavailable, Unauthorized

logger = logging.getLogger(__name__)

#: The admin ops this module answers.
OPS = frozenset({"login", "logout", "whoami", "mesh_keys", "add_user", "update_user", "delete_user", "ls_users",
                 "ls_user", "add_role", "delete_role", "ls_roles", "add_privilege", "delete_privilege", "ls_audit"})
#: Ops that change who may do what: answered once the live members serve the change.
_PROPAGATED = frozenset({"logout", "add_user", "update_user", "delete_user", "add_role", "delete_role",
                         "add_privilege", "delete_privilege"})
#: Seconds a change waits for the live members of the mesh to serve it before it is answered anyway.
PROPAGATE_WAIT = 5.0
#: Failed logins per client key, and per user name (from any keys), within FAILURE_WINDOW seconds
#: before more attempts are refused until the window has passed: one key guesses slowly, and many
#: keys together no faster than MAX_USER_FAILURES a minute (which is also how often anyone can
#: make a user wait by failing in its name).
MAX_FAILURES = 10
MAX_USER_FAILURES = 60
FAILURE_WINDOW = 60.0
#: Logins checked at once (argon2 takes 64 MiB and a few hundred ms each).
MAX_LOGINS_IN_FLIGHT = 4
#: Most audit rows one ``ls audit`` shows.
MAX_AUDIT_ROWS = 10_000
#: The file the first start writes the admin password to.
ADMIN_PASSWORD_FILE = "admin.password"


def first_admin(store: AccessStore, data_dir: Path) -> bool:
    """At first start (no user yet): user ``admin`` with the right ALL and a random password,
    written to ``<data-dir>/admin.password`` (0600) and logged once. True if it was made here."""
    password = secrets.token_urlsafe(18)
    try:
        made = store.ensure_admin(password)
    except StoreUnavailable as exc:
        logger.warning("cannot make the first user now: %s", exc.message)
        return False
    if not made:
        return False
    path = data_dir / ADMIN_PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    os.chmod(path, 0o600)
    logger.warning("first start: made user admin (right ALL) with password %s (also in %s); log in with "
                   "`ecctl login -u admin` and change it with `ecctl update user -n admin --password-stdin`",
                   password, path)
    return True


class AccessAdmin:
    """Answers the access admin ops of one node (loop thread)."""

    def __init__(self, *, store: AccessStore, guard: Any, audit: Any, sync: Any, bg_db: Any, bg_auth: Any,
                 reply: Callable[[Any, Any], None], config: Any, mesh_keys: Callable[[], list[dict[str, Any]]],
                 mesh: Any) -> None:
        self.store = store
        self.guard = guard
        self.audit = audit
        self.sync = sync
        self.bg_db = bg_db
        self.bg_auth = bg_auth
        self.reply = reply
        self.config = config
        self.mesh_keys = mesh_keys
        self.mesh = mesh
        self._failures: dict[str, deque[float]] = {}
        self._logins = 0
        self._waits: list[tuple[float, int, Callable[[list[str]], None]]] = []
        self.logins = 0
        self.failed_logins = 0

    def handles(self, op: str) -> bool:
        return op in OPS

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, peer: Any, msg: protocol.Admin) -> None:
        op, args = msg.op, dict(msg.args)
        principal: Principal = peer.principal
        if op == "login":
            self._login(peer, msg.request_id, args)
        elif op == "whoami":
            self._send(peer, msg.request_id, self._whoami(principal))
        elif op == "mesh_keys":
            self._send(peer, msg.request_id, self.mesh_keys())
        elif op == "logout":
            if principal.kind != USER:
                raise InvalidName(f"{principal.label} is not logged in: nothing to log out of")
            self._change(peer, msg.request_id, op, f"user {principal.name}",
                         lambda audit: self.store.logout(principal.key, audit=audit),
                         lambda done: {"user": principal.name, "logged_out": bool(done)})
        elif op in ("ls_users", "ls_roles"):
            read = self.store.list_users if op == "ls_users" else self.store.list_roles
            self._read(peer, msg.request_id, read)
        elif op == "ls_user":
            name = _text(args, "name")
            self._read(peer, msg.request_id, lambda: self.store.user(name))
        elif op == "ls_audit":
            rows = args.get("rows", 50)
            if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_AUDIT_ROWS:
                raise InvalidName(f"rows must be an integer between 1 and {MAX_AUDIT_ROWS}")
            user = args.get("user")
            if user is not None and not isinstance(user, str):
                raise InvalidName("user must be a user name")
            self._read(peer, msg.request_id, lambda: self.store.read_audit(rows, user), self.audit.then)
        else:
            self._manage(peer, msg.request_id, op, args, principal)

    def _manage(self, peer: Any, request_id: bytes, op: str, args: dict[str, Any], principal: Principal) -> None:
        store = self.store
        caller = (principal.label, principal.rights)  # checked in the change's own transaction
        if op == "add_user":
            name, password = _text(args, "name"), args.get("password")
            if not isinstance(password, str):
                raise InvalidName("add_user needs a password (ecctl prompts for it, or reads --password-stdin)")
            email = args.get("email")
            self._change(peer, request_id, op, f"user {name}",
                         lambda audit: store.add_user(name, password, email, audit=audit), slow=True)
        elif op == "update_user":
            name = _text(args, "name")
            add_roles, remove_roles = _names(args, "add_roles"), _names(args, "remove_roles")
            fields = {k: args[k] for k in ("email", "password", "enabled") if k in args}
            unknown = set(args) - {"name", "email", "password", "enabled", "add_roles", "remove_roles"}
            if unknown:
                raise InvalidName(f"unknown user field(s): {', '.join(sorted(unknown))}")
            what = ", ".join(sorted(k for k in fields if k != "password") + (["password"] if "password" in fields else [])
                             + [f"+role {r}" for r in add_roles] + [f"-role {r}" for r in remove_roles])
            self._change(peer, request_id, op, f"user {name}: {what}"[:300],
                         lambda audit: store.update_user(name, email=fields.get("email", ...),
                                                         password=fields.get("password"), enabled=fields.get("enabled"),
                                                         add_roles=add_roles, remove_roles=remove_roles, audit=audit,
                                                         caller=caller),
                         slow="password" in fields)
        elif op == "delete_user":
            name = _text(args, "name")
            self._change(peer, request_id, op, f"user {name}",
                         lambda audit: store.delete_user(name, audit=audit, caller=caller))
        elif op == "add_role":
            name = _text(args, "name")
            self._change(peer, request_id, op, f"role {name}", lambda audit: store.add_role(name, audit=audit))
        elif op == "delete_role":
            name = _text(args, "name")
            self._change(peer, request_id, op, f"role {name}",
                         lambda audit: store.delete_role(name, audit=audit, caller=caller))
        elif op in ("add_privilege", "delete_privilege"):
            right = _text(args, "name")
            user, role = args.get("user"), args.get("role")
            if not protocol.is_right(right):
                raise InvalidName(f"unknown right {right[:80]!r}; rights are: {', '.join(protocol.RIGHTS)}")
            holder = f"user {user}" if user is not None else f"role {role}"
            if op == "add_privilege":
                work = lambda audit: store.add_privilege(right, user=user, role=role, by=principal.label,  # noqa: E731
                                                         audit=audit, caller=caller)
            else:
                work = lambda audit: store.delete_privilege(right, user=user, role=role, audit=audit,  # noqa: E731
                                                            caller=caller)
            self._change(peer, request_id, op, f"{holder}: {right}", work)
        else:
            raise NotFound(f"unknown admin op '{op}'")

    # -- login ----------------------------------------------------------------------------------

    def _login(self, peer: Any, request_id: bytes, args: dict[str, Any]) -> None:
        principal: Principal = peer.principal
        if peer.local:
            raise InvalidName("the local socket needs no login: a process that can open it is the local administrator")
        if self.config.insecure or not peer.key:
            raise InvalidName("this node runs with --insecure: there is nothing to log in to")
        name = args.get("user")
        password = args.get("password")
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InvalidName("login needs a user name")
        if not isinstance(password, str):
            raise InvalidName("login needs a password")
        now = time.monotonic()
        for who in (f"user:{name}", f"key:{peer.key}"):
            window = self._failures.get(who)
            while window and now - window[0] > FAILURE_WINDOW:
                window.popleft()
            if window is not None and len(window) >= (MAX_USER_FAILURES if who.startswith("user:") else MAX_FAILURES):
                self.guard.deny(principal, "admin:login", f"user {name}", QueueFull("too many failed logins"))
                raise QueueFull(f"too many failed logins for {who.split(':')[0]} {name if who.startswith('user') else 'key'}; "
                                f"wait a minute and try again")
        if self._logins >= MAX_LOGINS_IN_FLIGHT:
            raise NodeUnavailable("too many logins at once; try again")
        self._logins += 1
        key, ttl, node = peer.key, self.config.session_ttl, self.config.name
        audit = self.audit.row(user=name, key=key, op="login", object=f"user {name}")
        base, epoch = self.sync.topology.version, self.sync.topology.epoch

        def work() -> tuple[Any, Any]:
            session = self.store.login(name, password, key, ttl, node, audit=audit)
            return session, self.sync.store.changes_since(base, epoch)

        def done(outcome: Any, error: BaseException | None) -> None:
            self._logins -= 1
            if error is not None:
                if isinstance(error, Unauthorized):
                    self.failed_logins += 1
                    for who in (f"user:{name}", f"key:{key}"):
                        self._failures.setdefault(who, deque()).append(time.monotonic())
                    if len(self._failures) > 100_000:  # an attacker's many keys: forget the oldest half
                        for stale in list(self._failures)[:50_000]:
                            del self._failures[stale]
                    self.guard.deny(principal, "admin:login", f"user {name}", error)
                self._fail(peer, request_id, error)
                return
            session, delta = outcome
            self.logins += 1
            self._failures.pop(f"user:{name}", None)
            logger.info("user %s logged in (key %s...)", session.user, key[:8])

            def answer() -> None:
                rights, roles = effective_rights(self.sync.topology, session.user)
                self._send(peer, request_id, {"user": session.user, "roles": list(roles), "rights": sorted(rights),
                                              "expires": session.expires, "node": node})

            self.sync.catch_up(delta, base, answer)

        self.bg_auth.submit(work, done)

    def _whoami(self, principal: Principal) -> dict[str, Any]:
        return {"user": principal.label, "kind": principal.kind, "roles": list(principal.roles),
                "rights": sorted(principal.rights), "key": principal.key or None,
                "expires": principal.expires or None, "node": self.config.name}

    # -- plumbing -------------------------------------------------------------------------------

    def _change(self, peer: Any, request_id: bytes, op: str, obj: str, work: Callable[[dict[str, Any]], Any],
                result: Callable[[Any], Any] = lambda value: value, slow: bool = False) -> None:
        """Run a change (on the auth thread when it hashes a password), audited in its own
        transaction; answer once this node serves it, and, for changes of access, once every
        live member does (or PROPAGATE_WAIT ran out: the answer says which did not)."""
        principal: Principal = peer.principal
        audit = self.audit.row(user=principal.label, key=principal.key, op=op, object=obj)
        base, epoch = self.sync.topology.version, self.sync.topology.epoch

        def job() -> tuple[Any, Any]:
            value = work(audit)
            return value, self.sync.store.changes_since(base, epoch)

        def done(outcome: Any, error: BaseException | None) -> None:
            if error is not None:
                self.sync.note_error(error)
                if isinstance(error, Forbidden):
                    self.guard.deny(principal, f"admin:{op}", obj, error)
                elif isinstance(error, EcdError) and not isinstance(error, StoreUnavailable):
                    self.audit.record(user=principal.label, key=principal.key, op=op, object=obj,
                                      outcome=f"error ({error.code}): {error.message}")
                self._fail(peer, request_id, error)
                return
            value, delta = outcome
            logger.info("admin %s %s by %s", op, obj, principal.label)

            def served() -> None:
                if op not in _PROPAGATED:
                    self._send(peer, request_id, result(value))
                    return
                self.after_mesh(self.sync.topology.version,
                                lambda lagging: self._send(peer, request_id, _with_lagging(result(value), lagging)))

            self.sync.catch_up(delta, base, served)

        (self.bg_auth if slow else self.bg_db).submit(job, done)

    def after_mesh(self, version: int, then: Callable[[list[str]], None]) -> None:
        """``then(lagging)`` once every live member serves topology ``version`` (its heartbeats
        say so), or after PROPAGATE_WAIT with the names of those that do not yet."""
        if not self._lagging(version):
            then([])
            return
        self._waits.append((time.monotonic() + PROPAGATE_WAIT, version, then))

    def _lagging(self, version: int) -> list[str]:
        return sorted(m.name or m.node_id for m in self.mesh.alive()
                      if not isinstance(m.info.get("topology"), int) or m.info["topology"] < version)

    def tick(self, mono: float) -> float:
        """Answer the changes whose propagation is done (or timed out); returns when to look again."""
        if not self._waits:
            return mono + 3600.0
        waiting = []
        for deadline, version, then in self._waits:
            lagging = self._lagging(version)
            if not lagging or mono >= deadline:
                if lagging:
                    logger.warning("access change %d not yet served by %s after %ss", version, ", ".join(lagging),
                                   PROPAGATE_WAIT)
                then(lagging)
            else:
                waiting.append((deadline, version, then))
        self._waits = waiting
        return mono + 0.05 if waiting else mono + 3600.0

    def _read(self, peer: Any, request_id: bytes, read: Callable[[], Any], submit: Any = None) -> None:
        def done(data: Any, error: BaseException | None) -> None:
            if error is not None:
                self.sync.note_error(error)
                self._fail(peer, request_id, error)
                return
            self._send(peer, request_id, data)

        (submit or self.bg_db.submit)(read, done)

    def _send(self, peer: Any, request_id: bytes, data: Any) -> None:
        self.reply(peer, protocol.Reply(data=data, request_id=request_id))

    def _fail(self, peer: Any, request_id: bytes, error: BaseException) -> None:
        self.reply(peer, failure(error, request_id))

    def status(self) -> dict[str, Any]:
        return {"logins": self.logins, "failed_logins": self.failed_logins, "session_ttl": self.config.session_ttl}


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidName(f"a {key} is required (-n NAME)" if key == "name" else f"{key} is required")
    return value


def _names(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidName(f"{key} must be a list of names")
    return value


def _with_lagging(data: Any, lagging: list[str]) -> Any:
    if isinstance(data, dict):
        return {**data, "not_yet_on": lagging} if lagging else data
    return data


__all__ = ["ADMIN_PASSWORD_FILE", "AccessAdmin", "OPS", "first_admin"]
