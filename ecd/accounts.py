"""Users, roles, privileges, login sessions and the audit log in the topology database (issue #12).

The seed's model: a **user** has a name, an email, an argon2id password hash (argon2-cffi; never
stored, logged or exported in clear), an ``enabled`` flag, **roles**, and **privileges** (rights
given to it directly); a **role** has privileges of its own. A **login session** binds a client's
CURVE public key to a user until it expires: a request from that key acts as that user.

What a node needs to authorize requests (users with their roles and direct rights, roles with their
rights, sessions) is part of its topology snapshot and change log, like the network: kinds
``user``, ``role`` and ``session`` (named by the user, the role and the key). Password hashes never
leave the database: logins are checked on a background thread of the node that takes them.

Writes run inside the store's write transaction (:class:`Accounts` is handed its writer), so every
change moves the topology version, lands in the change log and is pushed to every node. Audit rows
are written in the transaction of the change they describe, or in batches (denials).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import argon2
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ecd.errors import AlreadyExists, Forbidden, InvalidName, NotFound, Unauthorized
from ecd.netspec import check_name
from ecd.schema import AuditModel, LoginSessionModel, PrivilegeModel, RoleModel, UserModel, UserRoleModel
from protocol import RIGHTS, is_right

__all__ = ["ACCESS_KINDS", "AccessStore", "Accounts", "RESERVED_USERS", "RoleDef", "SessionDef", "UserDef", "hash_password",
           "load_access", "read_audit", "verify_login", "write_audit"]

#: Kinds of the access part of a topology (change log ``kind`` values), in dependency order.
ACCESS_KINDS = ("user", "role", "session")
#: Names no user may take: they name the principals that are not users (the ipc socket's local
#: administrator, and every client of a node run with ``--insecure``).
RESERVED_USERS = frozenset({"local", "insecure", "anonymous", "system"})
#: Shortest password accepted.
MIN_PASSWORD_CHARS = 8
#: Longest password accepted (argon2 takes any length; this bounds the work a request costs).
MAX_PASSWORD_CHARS = 1024
#: Longest email address.
MAX_EMAIL_CHARS = 320

_HASHER = argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory profile (argon2-cffi's default)
#: Verified when the user does not exist, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of any user")


@dataclasses.dataclass(frozen=True)
class UserDef:
    """A user as nodes hold it: no password hash; ``rights`` are its direct privileges."""

    id: str
    name: str
    email: str | None
    enabled: bool
    roles: tuple[str, ...] = ()
    rights: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RoleDef:
    """A role and the rights it gives."""

    id: str
    name: str
    rights: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SessionDef:
    """A login: requests from the CURVE key ``key`` act as ``user`` until ``expires`` (UNIX time)."""

    key: str
    user: str
    created: float
    expires: float
    node: str | None = None

    @property
    def name(self) -> str:
        return self.key


# --------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (slow on purpose: call it off the event loop)."""
    return _HASHER.hash(check_password(password))


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidName(f"a password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    if "\x00" in password:
        raise InvalidName("a password must not contain NUL")
    return password


def _check_user_name(name: Any) -> str:
    name = check_name(name, "user name")
    if name.lower() in RESERVED_USERS:
        raise InvalidName(f"user name {name!r} is reserved ({', '.join(sorted(RESERVED_USERS))} are not users)")
    return name


def _check_email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_EMAIL_CHARS or any(c.isspace() for c in value) \
            or value.count("@") != 1:
        raise InvalidName(f"invalid email {str(value)[:80]!r}: expected one address like joe@example.org")
    return value


def check_right(name: Any) -> str:
    """A right of the seed's list (with one family per kind); unknown names get the list."""
    if not is_right(name):
        raise InvalidName(f"unknown right {str(name)[:80]!r}; rights are: {', '.join(RIGHTS)}")
    return name


# --------------------------------------------------------------------------- reading


def _user_rows(session: Session, names: Iterable[str] | None) -> list[UserModel]:
    stmt = sa.select(UserModel).order_by(UserModel.name)
    if names is not None:
        stmt = stmt.where(UserModel.name.in_(list(names)))
    return list(session.scalars(stmt))


def load_users(session: Session, names: Iterable[str] | None = None) -> list[UserDef]:
    users = _user_rows(session, names)
    if not users:
        return []
    ids = [u.id for u in users]
    roles: dict[str, list[str]] = {i: [] for i in ids}
    for user_id, role in session.execute(sa.select(UserRoleModel.user_id, RoleModel.name)
                                         .join(RoleModel, UserRoleModel.role_id == RoleModel.id)
                                         .where(UserRoleModel.user_id.in_(ids))):
        roles[user_id].append(role)
    rights: dict[str, set[str]] = {i: set() for i in ids}
    for user_id, right in session.execute(sa.select(PrivilegeModel.user_id, PrivilegeModel.right)
                                          .where(PrivilegeModel.user_id.in_(ids))):
        rights[user_id].add(right)
    return [UserDef(id=u.id, name=u.name, email=u.email, enabled=bool(u.enabled), roles=tuple(sorted(roles[u.id])),
                    rights=tuple(sorted(rights[u.id]))) for u in users]


def load_roles(session: Session, names: Iterable[str] | None = None) -> list[RoleDef]:
    stmt = sa.select(RoleModel).order_by(RoleModel.name)
    if names is not None:
        stmt = stmt.where(RoleModel.name.in_(list(names)))
    roles = list(session.scalars(stmt))
    if not roles:
        return []
    rights: dict[str, set[str]] = {r.id: set() for r in roles}
    for role_id, right in session.execute(sa.select(PrivilegeModel.role_id, PrivilegeModel.right)
                                          .where(PrivilegeModel.role_id.in_(list(rights)))):
        rights[role_id].add(right)
    return [RoleDef(id=r.id, name=r.name, rights=tuple(sorted(rights[r.id]))) for r in roles]


def load_sessions(session: Session, keys: Iterable[str] | None = None) -> list[SessionDef]:
    stmt = sa.select(LoginSessionModel, UserModel.name).join(UserModel, LoginSessionModel.user_id == UserModel.id)
    if keys is not None:
        stmt = stmt.where(LoginSessionModel.key.in_(list(keys)))
    return [SessionDef(key=s.key, user=name, created=s.created, expires=s.expires, node=s.node)
            for s, name in session.execute(stmt.order_by(LoginSessionModel.key))]


_LOADERS = {"user": load_users, "role": load_roles, "session": load_sessions}


def load_access(session: Session, kind: str, names: Iterable[str] | None = None) -> dict[str, Any]:
    """``{name: Def}`` of an access kind (every object, or those ``names``)."""
    names = sorted(set(names)) if names is not None else None
    found: dict[str, Any] = {}
    for start in range(0, len(names) if names is not None else 1, 500):
        chunk = names[start:start + 500] if names is not None else None
        found.update((d.name, d) for d in _LOADERS[kind](session, chunk))
    return found


def user_detail(session: Session, name: str) -> dict[str, Any]:
    """``ls user -n NAME``: the user, its roles, and every privilege it has, direct and through roles."""
    user = session.scalars(sa.select(UserModel).where(UserModel.name == name)).one_or_none()
    if user is None:
        raise NotFound(f"user {name!r} does not exist")
    (found,) = load_users(session, [name])
    privileges = [{"right": p.right, "via": "direct", "created": p.created, "by": p.by}
                  for p in session.scalars(sa.select(PrivilegeModel).where(PrivilegeModel.user_id == user.id)
                                           .order_by(PrivilegeModel.right))]
    for role_name, p in session.execute(
            sa.select(RoleModel.name, PrivilegeModel)
            .join(UserRoleModel, UserRoleModel.role_id == RoleModel.id)
            .join(PrivilegeModel, PrivilegeModel.role_id == RoleModel.id)
            .where(UserRoleModel.user_id == user.id).order_by(RoleModel.name, PrivilegeModel.right)):
        privileges.append({"right": p.right, "via": f"role {role_name}", "created": p.created, "by": p.by})
    return {**_user_view(user, found), "privileges": privileges}


def _user_view(user: UserModel, found: UserDef) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email, "enabled": bool(user.enabled),
            "roles": list(found.roles), "rights": list(found.rights), "created": user.created,
            "updated": user.updated}


def list_users(session: Session) -> list[dict[str, Any]]:
    rows = {u.name: u for u in _user_rows(session, None)}
    return [_user_view(rows[d.name], d) for d in load_users(session)]


def list_roles(session: Session) -> list[dict[str, Any]]:
    members: dict[str, list[str]] = {}
    for role, user in session.execute(sa.select(RoleModel.name, UserModel.name)
                                      .join(UserRoleModel, UserRoleModel.role_id == RoleModel.id)
                                      .join(UserModel, UserRoleModel.user_id == UserModel.id)):
        members.setdefault(role, []).append(user)
    return [{"id": r.id, "name": r.name, "rights": list(r.rights), "users": sorted(members.get(r.name, ()))}
            for r in load_roles(session)]


def verify_login(session: Session, name: Any, password: Any) -> UserModel:
    """The user whose ``name`` and ``password`` these are; Unauthorized otherwise (as slowly for a
    user that does not exist as for a wrong password)."""
    user = None
    if isinstance(name, str) and len(name) <= 200:
        user = session.scalars(sa.select(UserModel).where(UserModel.name == name)).one_or_none()
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        password = ""
    try:
        _HASHER.verify(user.password if user is not None else _DUMMY_HASH, password)
    except argon2.exceptions.Argon2Error:
        raise Unauthorized("bad user name or password") from None
    except ValueError:  # not an argon2 hash at all
        raise Unauthorized("bad user name or password") from None
    if user is None or not user.enabled:  # a disabled user's right password says nothing more
        raise Unauthorized("bad user name or password")
    return user


# --------------------------------------------------------------------------- writing


#: Who makes a change, for the checks that nobody gives more than they hold: ``(name, rights)``;
#: None for the node itself (the first start).
Caller = tuple[str, frozenset[str]] | None


class Accounts:
    """The access writes of one topology write transaction (``writer`` is the store's).

    With a ``caller``, the rules that nobody gives more than they hold are checked here, against
    the rows this transaction sees (never a node's cache): changing a user needs every right that
    user holds, giving or deleting a role every right it gives, and the rights given or taken."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.session: Session = writer.session

    def _rights_of(self, user: UserModel) -> set[str]:
        rights = set(self.session.scalars(sa.select(PrivilegeModel.right).where(PrivilegeModel.user_id == user.id)))
        rights.update(self.session.scalars(
            sa.select(PrivilegeModel.right).join(UserRoleModel, UserRoleModel.role_id == PrivilegeModel.role_id)
            .where(UserRoleModel.user_id == user.id)))
        return rights

    def _role_rights(self, role: RoleModel) -> set[str]:
        return set(self.session.scalars(sa.select(PrivilegeModel.right).where(PrivilegeModel.role_id == role.id)))

    @staticmethod
    def within(caller: Caller, rights: set[str], why: str) -> None:
        """Forbidden unless ``caller`` holds every one of ``rights`` (ALL holds them all)."""
        if caller is None or "ALL" in caller[1]:
            return
        missing = sorted(rights - caller[1])
        if missing:
            raise Forbidden(f"permission denied: {caller[0]} lacks {missing[0]} ({why})", missing[0])

    def _user(self, name: Any) -> UserModel:
        check_name(name, "user name")
        user = self.session.scalars(sa.select(UserModel).where(UserModel.name == name)).one_or_none()
        if user is None:
            raise NotFound(f"user {name!r} does not exist")
        return user

    def _role(self, name: Any) -> RoleModel:
        check_name(name, "role name")
        role = self.session.scalars(sa.select(RoleModel).where(RoleModel.name == name)).one_or_none()
        if role is None:
            raise NotFound(f"role {name!r} does not exist")
        return role

    def count_users(self) -> int:
        return int(self.session.scalar(sa.select(sa.func.count()).select_from(UserModel)) or 0)

    def add_user(self, name: Any, password_hash: str, email: Any = None) -> dict[str, Any]:
        name = _check_user_name(name)
        email = _check_email(email)
        if self.session.scalars(sa.select(UserModel.id).where(UserModel.name == name)).first() is not None:
            raise AlreadyExists(f"user {name!r} already exists")
        now = time.time()
        user = UserModel(name=name, email=email, password=password_hash, enabled=True, created=now, updated=now)
        self.session.add(user)
        self.session.flush()
        self.writer.touch("user", name, "upsert")
        return self.user_view(name)

    def update_user(self, name: Any, *, email: Any = ..., password_hash: str | None = None,
                    enabled: Any = None, add_roles: Iterable[Any] = (), remove_roles: Iterable[Any] = (),
                    caller: Caller = None) -> dict[str, Any]:
        """Change a user. A new password or ``enabled=False`` ends its logins (a stolen key stops
        working with the password it was stolen under)."""
        user = self._user(name)
        self.within(caller, self._rights_of(user), f"user {user.name} holds it: changing a user needs every right it holds")
        if email is not ...:
            user.email = _check_email(email)
        if password_hash is not None:
            user.password = password_hash
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise InvalidName("enabled must be true or false")
            user.enabled = enabled
        if password_hash is not None or enabled is False:
            self._end_sessions(user)
        for role_name in add_roles:
            role = self._role(role_name)
            self.within(caller, self._role_rights(role), f"role {role.name} gives it: giving a role needs every right it gives")
            if self.session.get(UserRoleModel, (user.id, role.id)) is None:
                self.session.add(UserRoleModel(user_id=user.id, role_id=role.id))
        for role_name in remove_roles:
            role = self._role(role_name)
            link = self.session.get(UserRoleModel, (user.id, role.id))
            if link is None:
                raise NotFound(f"user {user.name!r} does not have role {role.name!r}")
            self.session.delete(link)
        user.updated = time.time()
        self.session.flush()
        self.writer.touch("user", user.name, "upsert")
        return self.user_view(user.name)

    def _end_sessions(self, user: UserModel) -> None:
        for key in self.session.scalars(sa.select(LoginSessionModel.key).where(LoginSessionModel.user_id == user.id)):
            self.writer.touch("session", key, "delete")
        self.session.execute(sa.delete(LoginSessionModel).where(LoginSessionModel.user_id == user.id))

    def delete_user(self, name: Any, caller: Caller = None) -> dict[str, Any]:
        user = self._user(name)
        self.within(caller, self._rights_of(user), f"user {user.name} holds it: deleting a user needs every right it holds")
        view = self.user_view(user.name)
        self._end_sessions(user)
        self.session.execute(sa.delete(PrivilegeModel).where(PrivilegeModel.user_id == user.id))
        self.session.execute(sa.delete(UserRoleModel).where(UserRoleModel.user_id == user.id))
        self.session.delete(user)
        self.session.flush()
        self.writer.touch("user", user.name, "delete")
        return view

    def add_role(self, name: Any) -> dict[str, Any]:
        name = check_name(name, "role name")
        if self.session.scalars(sa.select(RoleModel.id).where(RoleModel.name == name)).first() is not None:
            raise AlreadyExists(f"role {name!r} already exists")
        now = time.time()
        role = RoleModel(name=name, created=now, updated=now)
        self.session.add(role)
        self.session.flush()
        self.writer.touch("role", name, "upsert")
        return {"id": role.id, "name": name, "rights": [], "users": []}

    def delete_role(self, name: Any, caller: Caller = None) -> dict[str, Any]:
        role = self._role(name)
        self.within(caller, self._role_rights(role), f"role {role.name} gives it: deleting a role needs every right it gives")
        users = list(self.session.scalars(sa.select(UserModel.name).join(UserRoleModel, UserRoleModel.user_id == UserModel.id)
                                          .where(UserRoleModel.role_id == role.id)))
        (found,) = load_roles(self.session, [role.name])
        self.session.execute(sa.delete(PrivilegeModel).where(PrivilegeModel.role_id == role.id))
        self.session.execute(sa.delete(UserRoleModel).where(UserRoleModel.role_id == role.id))
        self.session.delete(role)
        self.session.flush()
        self.writer.touch("role", role.name, "delete")
        for user in users:
            self.writer.touch("user", user, "upsert")
        return {"id": role.id, "name": role.name, "rights": list(found.rights), "users": users}

    def add_privilege(self, right: Any, *, user: Any = None, role: Any = None, by: str | None = None,
                      caller: Caller = None) -> dict[str, Any]:
        right = check_right(right)
        holder_user, holder_role = self._holder(user, role)
        self._may_change_holder(caller, right, holder_user, "given")
        where = self._holder_clause(holder_user, holder_role)
        if self.session.scalars(sa.select(PrivilegeModel.id).where(where, PrivilegeModel.right == right)).first() is not None:
            raise AlreadyExists(f"{self._holder_text(holder_user, holder_role)} has {right} already")
        self.session.add(PrivilegeModel(user_id=holder_user.id if holder_user else None,
                                        role_id=holder_role.id if holder_role else None,
                                        right=right, created=time.time(), by=by))
        self.session.flush()
        self._touch_holder(holder_user, holder_role)
        return {"right": right, "user": holder_user.name if holder_user else None,
                "role": holder_role.name if holder_role else None, "by": by}

    def delete_privilege(self, right: Any, *, user: Any = None, role: Any = None, caller: Caller = None) -> dict[str, Any]:
        right = check_right(right)
        holder_user, holder_role = self._holder(user, role)
        self._may_change_holder(caller, right, holder_user, "taken")
        where = self._holder_clause(holder_user, holder_role)
        found = self.session.scalars(sa.select(PrivilegeModel).where(where, PrivilegeModel.right == right)).first()
        if found is None:
            raise NotFound(f"{self._holder_text(holder_user, holder_role)} does not have {right}")
        self.session.delete(found)
        self.session.flush()
        self._touch_holder(holder_user, holder_role)
        return {"right": right, "user": holder_user.name if holder_user else None,
                "role": holder_role.name if holder_role else None}

    def _may_change_holder(self, caller: Caller, right: str, user: UserModel | None, done: str) -> None:
        self.within(caller, {right}, f"only rights one holds can be {done}")
        if user is not None:
            self.within(caller, self._rights_of(user), f"user {user.name} holds it: changing a user needs every right it holds")

    def _holder(self, user: Any, role: Any) -> tuple[UserModel | None, RoleModel | None]:
        if (user is None) == (role is None):
            raise InvalidName("give a user (-u NAME) or a role (-r NAME), not both")
        return (self._user(user), None) if user is not None else (None, self._role(role))

    @staticmethod
    def _holder_clause(user: UserModel | None, role: RoleModel | None) -> Any:
        return PrivilegeModel.user_id == user.id if user is not None else PrivilegeModel.role_id == role.id  # type: ignore[union-attr]

    @staticmethod
    def _holder_text(user: UserModel | None, role: RoleModel | None) -> str:
        return f"user {user.name}" if user is not None else f"role {role.name}"  # type: ignore[union-attr]

    def _touch_holder(self, user: UserModel | None, role: RoleModel | None) -> None:
        if user is not None:
            self.writer.touch("user", user.name, "upsert")
        else:
            assert role is not None
            self.writer.touch("role", role.name, "upsert")

    def create_session(self, user: UserModel, key: str, ttl: float, node: str) -> SessionDef:
        """Bind ``key`` to ``user`` for ``ttl`` seconds (a new login of the same key replaces its
        session); sessions that expired are deleted on the way."""
        now = time.time()
        for expired in self.session.scalars(sa.select(LoginSessionModel.key).where(LoginSessionModel.expires < now)):
            self.writer.touch("session", expired, "delete")
        self.session.execute(sa.delete(LoginSessionModel).where(LoginSessionModel.expires < now))
        row = self.session.get(LoginSessionModel, key)
        if row is None:
            row = LoginSessionModel(key=key, user_id=user.id, created=now, expires=now + ttl, node=node)
            self.session.add(row)
        else:
            row.user_id, row.created, row.expires, row.node = user.id, now, now + ttl, node
        self.session.flush()
        self.writer.touch("session", key, "upsert")
        return SessionDef(key=key, user=user.name, created=now, expires=now + ttl, node=node)

    def delete_session(self, key: str) -> bool:
        row = self.session.get(LoginSessionModel, key)
        if row is None:
            return False
        self.session.delete(row)
        self.session.flush()
        self.writer.touch("session", key, "delete")
        return True

    def user_view(self, name: str) -> dict[str, Any]:
        user = self._user(name)
        (found,) = load_users(self.session, [name])
        return _user_view(user, found)


# --------------------------------------------------------------------------- audit

#: Columns of an audit row, in order.
AUDIT_FIELDS = ("time", "user", "key", "node", "op", "object", "outcome")


def audit_row(**fields: Any) -> dict[str, Any]:
    """One audit row with its text fields cut to their column sizes."""
    row = {name: fields.get(name) for name in AUDIT_FIELDS}
    row["time"] = float(row["time"] or time.time())
    for name, size in (("user", 200), ("key", 64), ("node", 200), ("op", 64), ("object", 300), ("outcome", 300)):
        if row[name] is not None:
            row[name] = str(row[name])[:size]
    row["op"] = row["op"] or "?"
    row["outcome"] = row["outcome"] or "ok"
    return row


def write_audit(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(sa.insert(AuditModel), [audit_row(**row) for row in rows])


def read_audit(session: Session, rows: int, user: str | None = None) -> list[dict[str, Any]]:
    """The newest ``rows`` audit rows (of ``user`` only, when given), newest first."""
    stmt = sa.select(AuditModel).order_by(AuditModel.time.desc(), AuditModel.id.desc()).limit(rows)
    if user is not None:
        stmt = stmt.where(AuditModel.user == user)
    return [{name: getattr(row, name) for name in ("id", *AUDIT_FIELDS)} for row in session.scalars(stmt)]


# --------------------------------------------------------------------------- the store's access part


class AccessStore:
    """Users, roles, privileges, logins and the audit log, over a :class:`~ecd.topology.TopologyStore`
    (synchronous and slow where passwords are hashed: the node calls it off its event loop)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def ensure_admin(self, password: str) -> bool:
        """With no user yet, make ``admin`` with the right ALL and ``password``; True if it was made
        (False: there are users already, or another node made them first)."""
        with self.store.session() as session:
            if session.scalar(sa.select(sa.func.count()).select_from(UserModel)):
                return False
        hashed = hash_password(password)
        try:
            with self.store.writing(audit=audit_row(user="system", op="add_user", object="user admin",
                                                    outcome="ok: first start, right ALL")) as writer:
                accounts = writer.accounts
                if accounts.count_users():
                    return False
                accounts.add_user("admin", hashed)
                accounts.add_privilege("ALL", user="admin", by="system")
        except AlreadyExists:
            return False
        except Exception as exc:  # noqa: BLE001 - two nodes made it at once: the other one won
            if "unique" in str(exc).lower() or "conflict" in str(exc).lower():
                return False
            raise
        return True

    def add_user(self, name: Any, password: Any, email: Any = None, *, audit: dict[str, Any] | None = None) -> dict[str, Any]:
        _check_user_name(name)
        hashed = hash_password(password)
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.add_user(name, hashed, email)

    def update_user(self, name: Any, *, email: Any = ..., password: Any = None, enabled: Any = None,
                    add_roles: Iterable[Any] = (), remove_roles: Iterable[Any] = (),
                    audit: dict[str, Any] | None = None, caller: Caller = None) -> dict[str, Any]:
        hashed = hash_password(password) if password is not None else None
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.update_user(name, email=email, password_hash=hashed, enabled=enabled,
                                               add_roles=add_roles, remove_roles=remove_roles, caller=caller)

    def delete_user(self, name: Any, *, audit: dict[str, Any] | None = None, caller: Caller = None) -> dict[str, Any]:
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.delete_user(name, caller=caller)

    def add_role(self, name: Any, *, audit: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.add_role(name)

    def delete_role(self, name: Any, *, audit: dict[str, Any] | None = None, caller: Caller = None) -> dict[str, Any]:
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.delete_role(name, caller=caller)

    def add_privilege(self, right: Any, *, user: Any = None, role: Any = None, by: str | None = None,
                      audit: dict[str, Any] | None = None, caller: Caller = None) -> dict[str, Any]:
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.add_privilege(right, user=user, role=role, by=by, caller=caller)

    def delete_privilege(self, right: Any, *, user: Any = None, role: Any = None,
                         audit: dict[str, Any] | None = None, caller: Caller = None) -> dict[str, Any]:
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.delete_privilege(right, user=user, role=role, caller=caller)

    def login(self, name: Any, password: Any, key: str, ttl: float, node: str,
              audit: dict[str, Any] | None = None) -> SessionDef:
        """Check the password (slowly), then bind ``key`` to the user for ``ttl`` seconds."""
        with self.store.session() as session:
            user_id = verify_login(session, name, password).id
        with self.store.writing(audit=audit) as writer:
            user = writer.session.get(UserModel, user_id)
            if user is None or not user.enabled:
                raise Unauthorized("bad user name or password")
            return writer.accounts.create_session(user, key, ttl, node)

    def logout(self, key: str, *, audit: dict[str, Any] | None = None) -> bool:
        with self.store.writing(audit=audit) as writer:
            return writer.accounts.delete_session(key)

    def list_users(self) -> list[dict[str, Any]]:
        with self.store.session() as session:
            return list_users(session)

    def user(self, name: Any) -> dict[str, Any]:
        check_name(name, "user name")
        with self.store.session() as session:
            return user_detail(session, name)

    def list_roles(self) -> list[dict[str, Any]]:
        with self.store.session() as session:
            return list_roles(session)

    def write_audit(self, rows: list[dict[str, Any]]) -> None:
        with self.store.session() as session:
            write_audit(session, rows)

    def read_audit(self, rows: int, user: str | None = None) -> list[dict[str, Any]]:
        with self.store.session() as session:
            return read_audit(session, rows, user)
