"""The access part of :class:`ecctl.Client`: logout, whoami, users, roles, privileges, the audit log.

Each method is one ADMIN request (SPEC.md, "Users, roles and rights"); the daemon checks the
caller's rights (ERROR 401 when it is not logged in, 403 when it lacks the right). ``login`` itself
is :meth:`ecctl.Client.login` (it keeps the user and password to log in again).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AccessCalls"]


class AccessCalls:
    """Mixed into :class:`ecctl.Client`, whose :meth:`admin` sends the requests."""

    def admin(self, op: str, **args: Any) -> Any:  # pragma: no cover - Client's
        raise NotImplementedError

    def logout(self) -> dict[str, Any]:
        """End this client key's login on every node of the mesh."""
        return self.admin("logout")

    def whoami(self) -> dict[str, Any]:
        """``{"user", "kind", "roles", "rights", "key", "expires", "node"}`` of this client."""
        return self.admin("whoami")

    def mesh_keys(self) -> list[dict[str, Any]]:
        """``[{"name", "key", "endpoints"}]``: the public key of every node of the mesh."""
        return self.admin("mesh_keys")

    def add_user(self, name: str, password: str, email: str | None = None) -> dict[str, Any]:
        """A new user (no rights yet): give it rights with :meth:`add_privilege` or roles."""
        args: dict[str, Any] = {"name": name, "password": password}
        if email is not None:
            args["email"] = email
        return self.admin("add_user", **args)

    def update_user(self, name: str, *, email: str | None = None, password: str | None = None,
                    enabled: bool | None = None, add_roles: list[str] | tuple[str, ...] = (),
                    remove_roles: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
        """Change a user: only what is given is sent."""
        args: dict[str, Any] = {"name": name}
        for key, value in (("email", email), ("password", password), ("enabled", enabled)):
            if value is not None:
                args[key] = value
        if add_roles:
            args["add_roles"] = list(add_roles)
        if remove_roles:
            args["remove_roles"] = list(remove_roles)
        return self.admin("update_user", **args)

    def delete_user(self, name: str) -> dict[str, Any]:
        return self.admin("delete_user", name=name)

    def ls_users(self) -> list[dict[str, Any]]:
        return self.admin("ls_users")

    def ls_user(self, name: str) -> dict[str, Any]:
        """A user with every privilege it has, direct and through its roles."""
        return self.admin("ls_user", name=name)

    def add_role(self, name: str) -> dict[str, Any]:
        return self.admin("add_role", name=name)

    def delete_role(self, name: str) -> dict[str, Any]:
        return self.admin("delete_role", name=name)

    def ls_roles(self) -> list[dict[str, Any]]:
        return self.admin("ls_roles")

    def add_privilege(self, right: str, *, user: str | None = None, role: str | None = None) -> dict[str, Any]:
        """Give ``right`` to a user or a role (one of them)."""
        return self.admin("add_privilege", name=right, **_holder(user, role))

    def delete_privilege(self, right: str, *, user: str | None = None, role: str | None = None) -> dict[str, Any]:
        return self.admin("delete_privilege", name=right, **_holder(user, role))

    def ls_audit(self, rows: int = 50, user: str | None = None) -> list[dict[str, Any]]:
        """The newest audit rows (admin changes, logins, logouts, denials), newest first."""
        args: dict[str, Any] = {"rows": rows}
        if user is not None:
            args["user"] = user
        return self.admin("ls_audit", **args)


def _holder(user: str | None, role: str | None) -> dict[str, str]:
    if (user is None) == (role is None):
        raise ValueError("give a user or a role")
    return {"user": user} if user is not None else {"role": role}  # type: ignore[dict-item]
