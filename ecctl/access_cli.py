"""``ecctl trust|login|logout|whoami`` and the seed's users, roles and privileges on the command line.

``trust ENDPOINT KEY`` pins a node's public key (``ecd keys show`` prints it); ``login`` proves a
password once and binds this client's key to the user (on every node of the mesh), so the next
commands need no password. Passwords are never taken on the command line: ``--password-stdin``
reads one line from stdin, else ecctl asks on the terminal.

``add user|role|privilege``, ``update user``, ``delete user|role|privilege`` and ``ls
users|user|roles|audit`` are added to the groups of :mod:`ecctl.objects`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from . import output
from .context import json_option, json_param, show, state_of
from .objects import add_group, delete_cmd, ls_group, update_group
from .trust import KnownNodes

__all__ = ["login_cmd", "logout_cmd", "trust_cmd", "whoami_cmd"]


def _password(from_stdin: bool, *, confirm: bool, prompt: str = "Password") -> str:
    """One line of stdin with ``--password-stdin``; else asked on the terminal (never echoed)."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if not password:
            raise click.UsageError("--password-stdin: stdin gave no password")
        return password
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to ask for the password on: give --password-stdin")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


_password_stdin = click.option("--password-stdin", is_flag=True,
                               help="Read the password from the first line of stdin (never give it as an argument).")


def _when(expires: Any) -> str:
    return output.fmt_time(expires) if isinstance(expires, (int, float)) else "-"


# ----------------------------------------------------------------------------- trust / login


@click.command("trust")
@click.argument("endpoint")
@click.argument("key")
def trust_cmd(endpoint: str, key: str) -> None:
    """Trust KEY (from `ecd keys show` on that node) as the key of the node at ENDPOINT."""
    known = KnownNodes()
    replaced = known.trust(endpoint, key)
    click.echo(f"trusted {endpoint} ({known.path})")
    if replaced:
        click.echo(f"warning: {endpoint} had another key ({replaced}); it is replaced", err=True)


@click.command("login")
@click.option("-u", "--user", metavar="NAME", help="User to log in as (asked for when not given).")
@_password_stdin
@json_option
@click.pass_context
def login_cmd(ctx: click.Context, user: str | None, password_stdin: bool, json_flag: bool) -> None:
    """Log in to the node (and its mesh): the next commands from this client act as USER."""
    state = state_of(ctx, json_flag)
    if not user:
        if not sys.stdin.isatty():
            raise click.UsageError("give the user with -u NAME")
        user = click.prompt("Name")
    password = _password(password_stdin, confirm=False)
    data = state.client.login(user, password)
    rights = ", ".join(data.get("rights") or []) or "none"
    show(state, data, f"logged in as {data.get('user')} until {_when(data.get('expires'))} (rights: {rights})")


@click.command("logout")
@json_option
@click.pass_context
def logout_cmd(ctx: click.Context, json_flag: bool) -> None:
    """End this client's login on every node of the mesh."""
    state = state_of(ctx, json_flag)
    data = state.client.logout()
    show(state, data, f"logged out {data.get('user')}")


@click.command("whoami")
@json_option
@click.pass_context
def whoami_cmd(ctx: click.Context, json_flag: bool) -> None:
    """Print who this client is to the node: user, roles and rights."""
    state = state_of(ctx, json_flag)
    data = state.client.whoami()
    if state.json:
        click.echo(output.to_json(data))
        return
    click.echo(f"user {data.get('user')} ({data.get('kind')})")
    click.echo(f"roles {', '.join(data.get('roles') or []) or '-'}")
    click.echo(f"rights {', '.join(data.get('rights') or []) or '-'}")
    if data.get("expires"):
        click.echo(f"until {_when(data['expires'])}")


# ----------------------------------------------------------------------------- users


def _holder(user: str | None, role: str | None) -> dict[str, str]:
    if (user is None) == (role is None):
        raise click.UsageError("give a user (-u NAME) or a role (-r NAME)")
    return {"user": user} if user is not None else {"role": role}  # type: ignore[dict-item]


@add_group.command("user")
@click.option("-n", "--name", required=True, help="Name of the user.")
@click.option("-e", "--email", help="Email address.")
@_password_stdin
@json_option
@click.pass_context
def add_user_cmd(ctx: click.Context, name: str, email: str | None, password_stdin: bool, json_flag: bool) -> None:
    """Add a user (with no rights: give it privileges or roles)."""
    state = state_of(ctx, json_flag)
    password = _password(password_stdin, confirm=True)
    show(state, state.client.add_user(name, password, email), f'User "{name}" added')


@update_group.command("user")
@click.option("-n", "--name", required=True, help="Name of the user.")
@click.option("-e", "--email", help="New email address.")
@click.option("--add-role", "add_roles", multiple=True, metavar="ROLE", help="Give it a role (repeatable).")
@click.option("--remove-role", "remove_roles", multiple=True, metavar="ROLE", help="Take a role away (repeatable).")
@_password_stdin
@click.option("--password", "new_password", is_flag=True, help="Ask for a new password on the terminal.")
@click.option("--enabled/--disabled", default=None, help="Let the user log in and act, or not.")
@json_option
@click.pass_context
def update_user_cmd(ctx: click.Context, name: str, email: str | None, add_roles: tuple[str, ...],
                    remove_roles: tuple[str, ...], password_stdin: bool, new_password: bool, enabled: bool | None,
                    json_flag: bool) -> None:
    """Change a user: email, roles, password, enabled. A disabled user is refused everywhere at once."""
    state = state_of(ctx, json_flag)
    password = _password(password_stdin, confirm=True) if (password_stdin or new_password) else None
    if email is None and not add_roles and not remove_roles and password is None and enabled is None:
        raise click.UsageError("nothing to change: give --email, --add-role, --remove-role, --password-stdin, "
                               "--enabled or --disabled")
    data = state.client.update_user(name, email=email, password=password, enabled=enabled, add_roles=add_roles,
                                    remove_roles=remove_roles)
    show(state, data, f"updated user {name}" + _lagging(data))


def _lagging(data: Any) -> str:
    lagging = data.get("not_yet_on") if isinstance(data, dict) else None
    return f" (not yet served by {', '.join(lagging)})" if lagging else ""


def _delete_command(kind: str, text: str) -> None:
    """``delete user|role -n NAME``."""
    @click.pass_context
    def callback(ctx: click.Context, name: str, json_flag: bool) -> None:
        state = state_of(ctx, json_flag)
        show(state, getattr(state.client, f"delete_{kind}")(name), f"deleted {kind} {name}")

    delete_cmd.add_command(click.Command(kind, callback=callback, help=text, params=[
        click.Option(["-n", "--name"], required=True, help=f"Name of the {kind}."), json_param()]))


_delete_command("user", "Delete a user (its logins end everywhere).")
_delete_command("role", "Delete a role (its users lose what it gave them).")


@ls_group.command("users")
@json_option
@click.pass_context
def ls_users_cmd(ctx: click.Context, json_flag: bool) -> None:
    """List users: email, enabled, roles and direct rights."""
    _listing(state_of(ctx, json_flag), lambda client: client.ls_users(), ["Name", "Email", "Enabled", "Roles", "Rights"],
             lambda u: [u.get("name"), u.get("email"), "yes" if u.get("enabled") else "no", _names(u.get("roles")),
                        _names(u.get("rights"))])


def _names(values: Any) -> str | None:
    return ", ".join(values or []) or None


def _listing(state: Any, fetch: Any, headers: list[str], row: Any) -> None:
    """A listing as JSON (``--json``) or a table of one row per item."""
    items = fetch(state.client)
    if state.json:
        click.echo(output.to_json(items))
        return
    click.echo(output.table(headers, [row(item) for item in items]))


@ls_group.command("user")
@click.option("-n", "--name", required=True, help="Name of the user.")
@json_option
@click.pass_context
def ls_user_cmd(ctx: click.Context, name: str, json_flag: bool) -> None:
    """One user and its privileges, direct and through its roles (the seed's `ls user`)."""
    state = state_of(ctx, json_flag)
    user = state.client.ls_user(name)
    if state.json:
        click.echo(output.to_json(user))
        return
    click.echo(output.table(["Name", "ID", "Email", "Enabled", "Roles"],
                            [[user.get("name"), user.get("id"), user.get("email"), "yes" if user.get("enabled") else "no",
                              ", ".join(user.get("roles") or []) or None]]))
    click.echo("Privileges")
    click.echo(output.table(["Name", "Right", "Via", "Last Updated", "By"],
                            [[user.get("name"), p.get("right"), p.get("via"), output.fmt_time(p.get("created")),
                              p.get("by")] for p in user.get("privileges") or []]))


# ----------------------------------------------------------------------------- roles, privileges


@add_group.command("role")
@click.option("-n", "--name", required=True, help="Name of the role.")
@json_option
@click.pass_context
def add_role_cmd(ctx: click.Context, name: str, json_flag: bool) -> None:
    """Add a role (give it privileges; give it to users with `update user --add-role`)."""
    state = state_of(ctx, json_flag)
    role = state.client.add_role(name)
    show(state, role, f"{role.get('id')}:{name}")


@ls_group.command("roles")
@json_option
@click.pass_context
def ls_roles_cmd(ctx: click.Context, json_flag: bool) -> None:
    """List roles with their rights and users."""
    _listing(state_of(ctx, json_flag), lambda client: client.ls_roles(), ["Name", "Rights", "Users"],
             lambda r: [r.get("name"), _names(r.get("rights")), _names(r.get("users"))])


def _privilege_command(group: click.Group, action: str, text: str) -> None:
    """``add privilege`` / ``delete privilege`` (-u USER | -r ROLE) -n RIGHT."""
    verb = "give the right to" if action == "add" else "take the right from"

    @click.pass_context
    def callback(ctx: click.Context, user: str | None, role: str | None, right: str, json_flag: bool) -> None:
        state = state_of(ctx, json_flag)
        data = getattr(state.client, f"{action}_privilege")(right, **_holder(user, role))
        show(state, data, f"Privilege {'added' if action == 'add' else 'deleted'}" + _lagging(data))

    group.add_command(click.Command("privilege", callback=callback, help=text, params=[
        click.Option(["-u", "--user"], help=f"User to {verb}."),
        click.Option(["-r", "--role"], help=f"Role to {verb}."),
        click.Option(["-n", "--name", "right"], required=True, metavar="RIGHT", help="The right (e.g. ADD_PROCESSOR)."),
        json_param()]))


_privilege_command(add_group, "add", "Give a right to a user or a role (one can give only rights one holds).")
_privilege_command(delete_cmd, "delete", "Take a right from a user or a role (refused everywhere at once).")


@ls_group.command("audit")
@click.option("-r", "--rows", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Newest rows to show.")
@click.option("-u", "--user", help="Only this user's rows.")
@json_option
@click.pass_context
def ls_audit_cmd(ctx: click.Context, rows: int, user: str | None, json_flag: bool) -> None:
    """The audit log, newest first: admin changes, logins, logouts and every denial."""
    _listing(state_of(ctx, json_flag), lambda client: client.ls_audit(rows, user),
             ["Time", "User", "Node", "Op", "Object", "Outcome"],
             lambda e: [output.fmt_time(e.get("time")), e.get("user"), e.get("node"), e.get("op"), e.get("object"),
                        e.get("outcome")])
