"""Users, roles, privileges and sessions in the topology database (ecd/accounts.py), on SQLite:
the rules that nobody gives more than they hold are checked against the rows the change's own
transaction sees (never a node's cache), and what ends a login ends it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ecd.accounts import AccessStore
from ecd.errors import AlreadyExists, Forbidden, InvalidName, Unauthorized
from ecd.topology import TopologyStore


@pytest.fixture
def access(tmp_path: Path) -> Iterator[AccessStore]:
    store = TopologyStore(f"sqlite:///{tmp_path / 'topology.db'}")
    store.ensure_schema()
    yield AccessStore(store)
    store.close()


def test_first_admin_once(access: AccessStore) -> None:
    assert access.ensure_admin("a-long-password") is True
    assert access.ensure_admin("another-password") is False
    (admin,) = access.list_users()
    assert (admin["name"], admin["rights"]) == ("admin", ["ALL"])
    assert "password" not in admin and "a-long-password" not in str(access.user("admin"))


def test_names_passwords_and_rights_are_checked(access: AccessStore) -> None:
    for bad in ("local", "Insecure", "-x", "a b"):
        with pytest.raises(InvalidName):
            access.add_user(bad, "a-long-password")
    with pytest.raises(InvalidName, match="8 to 1024"):
        access.add_user("joe", "short")
    access.add_user("joe", "a-long-password", "joe@xyz")
    with pytest.raises(AlreadyExists):
        access.add_user("joe", "a-long-password")
    with pytest.raises(InvalidName, match="rights are: ALL, CREATE"):
        access.add_privilege("root", user="joe")


def test_giving_a_role_needs_every_right_it_gives_read_in_the_transaction(access: AccessStore) -> None:
    access.add_user("mal", "mal-password")
    access.add_role("dba")
    access.add_privilege("ALL", role="dba")  # committed, whatever any node's cache says
    mal = ("mal", frozenset({"UPDATE_USER", "RUN_TASK"}))
    with pytest.raises(Forbidden, match="lacks ALL"):
        access.update_user("mal", add_roles=["dba"], caller=mal)
    with pytest.raises(Forbidden, match="lacks ALL"):
        access.delete_role("dba", caller=("mal", frozenset({"DELETE_ROLE"})))
    access.add_role("runners")
    access.add_privilege("RUN_TASK", role="runners")
    assert access.update_user("mal", add_roles=["runners"], caller=mal)["roles"] == ["runners"]


def test_changing_a_user_needs_every_right_it_holds(access: AccessStore) -> None:
    access.ensure_admin("admin-password")
    access.add_user("helpdesk", "helpdesk-password")
    helpdesk = ("helpdesk", frozenset({"UPDATE_USER", "DELETE_USER", "ADD_PRIVILEGE", "DELETE_PRIVILEGE"}))
    for change in (lambda: access.update_user("admin", password="taken-over!", caller=helpdesk),
                   lambda: access.delete_user("admin", caller=helpdesk),
                   lambda: access.delete_privilege("ALL", user="admin", caller=helpdesk),
                   lambda: access.add_privilege("RUN_TASK", user="helpdesk", caller=helpdesk)):
        with pytest.raises(Forbidden):
            change()
    assert access.add_privilege("ADD_PRIVILEGE", user="helpdesk", caller=helpdesk)["right"] == "ADD_PRIVILEGE"


def test_a_new_password_or_disabling_ends_the_logins(access: AccessStore) -> None:
    key = "K" * 40
    access.add_user("joe", "joe-password")
    access.login("joe", "joe-password", key, 60.0, "n1")
    access.update_user("joe", password="new-joe-password")
    assert key not in access.store.snapshot().sessions
    access.login("joe", "new-joe-password", key, 60.0, "n1")
    assert access.store.snapshot().sessions[key].user == "joe"
    access.update_user("joe", enabled=False)
    assert key not in access.store.snapshot().sessions
    with pytest.raises(Unauthorized, match="^bad user name or password$"):  # disabled: says nothing more
        access.login("joe", "new-joe-password", "L" * 40, 60.0, "n1")
