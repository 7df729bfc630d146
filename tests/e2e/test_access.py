"""Users, roles and rights enforced on a real node over CURVE tcp (issue #12), as users meet them:
each right allows what it names and nothing else, calls belong to their users, logins expire and
are revoked, nobody gives rights they lack, and the audit log shows every change and denial."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from ecctl import Client, ServerError
from tests.conftest import ROOT, EcdProcess, admin_password, register_sample, run_ecctl
from tests.mesh import free_port_on
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


class Users:
    """Users of one node, each with a client of its own (its own key pair) logged in over tcp."""

    def __init__(self, node: EcdProcess) -> None:
        self.node = node
        self.base = Path(tempfile.mkdtemp(prefix="ec-users-"))
        self.admin = self.client("admin", admin_password(node.data_dir))
        self.admin.login()

    def client(self, name: str, password: str, folder: str = "", **kwargs: Any) -> Client:
        """A client of ``name`` with the key pair of ``folder`` (default: the user's own)."""
        assert self.node.listen
        return Client(self.node.listen, server_key=self.node.key, config_dir=self.base / (folder or name), user=name,
                      password=password, **kwargs)

    def make(self, name: str, *rights: str) -> Client:
        """A user with exactly ``rights`` (given directly), logged in."""
        self.admin.add_user(name, f"{name}-password", f"{name}@example.org")
        for right in rights:
            self.admin.add_privilege(right, user=name)
        client = self.client(name, f"{name}-password")
        client.login()
        return client

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def tcp_node(ecd_factory: Callable[..., EcdProcess], *extra: str, name: str = "n1") -> EcdProcess:
    return ecd_factory(name, cpus=2, listen=f"tcp://127.0.0.1:{free_port_on('127.0.0.1')}", extra=("--name", name, *extra))


@pytest.fixture(scope="module")
def secured(venv_cache: Path, sample_repo: str) -> Iterator[tuple[EcdProcess, Users]]:
    """One node with the example running, and its admin over tcp."""
    base = Path(tempfile.mkdtemp(prefix="ec-access-"))
    node = EcdProcess(base / "n1", venv_cache, cpus=2, listen=f"tcp://127.0.0.1:{free_port_on('127.0.0.1')}",
                      extra=("--name", "n1"))
    users = None
    try:
        node.start()
        users = Users(node)
        register_sample(users.admin, sample_repo, concurrency=2)
        yield node, users
    finally:
        for client in _HOSTILE.values():
            client.close()
        _HOSTILE.clear()
        if users is not None:
            users.close()
        node.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def attempt(action: Callable[[], Any]) -> str:
    """``ok``, or the refusal: ``401`` / ``403`` (other errors are the test's bug: re-raised)."""
    try:
        action()
    except ServerError as exc:
        if exc.code in (401, 403):
            return str(exc.code)
        raise
    return "ok"


def probes(client: Client) -> dict[str, Callable[[], Any]]:
    name = f"q-{uuid.uuid4().hex[:8]}"
    return {
        "call": lambda: client.call("sample.tasks.do_this", "x").get(timeout=30),
        "add_queue": lambda: client.add_queue(name),
        "ls_queues": lambda: client.ls("queues"),
        "pause": lambda: client.proc("pause", "proc1"),
        "export": lambda: client.export(),
        "status": lambda: client.status(),
        "listen": lambda: client.request(protocol.Listen(name="", channel="task", ttl_ms=1000)),
        "audit": lambda: client.ls_audit(5),
        "add_role": lambda: client.add_role(f"r-{uuid.uuid4().hex[:8]}"),
        "ls_calls": lambda: client.ls_calls(),
        "whoami": lambda: client.whoami(),
    }


#: right -> the probes it allows (besides what any login allows: ls_calls, whoami).
MATRIX = {
    "": set(),
    "RUN_TASK": {"call"},
    "ADD_QUEUE": {"add_queue"},
    "LS_QUEUES": {"ls_queues"},
    "PAUSE_PROCESSOR": {"pause"},
    "READ": {"ls_queues", "export", "status"},
    "READ_LOG": {"listen", "audit"},
    "CREATE": {"add_queue", "add_role"},
    "ALL": {"call", "add_queue", "ls_queues", "pause", "export", "status", "listen", "audit", "add_role"},
}


def test_each_right_allows_exactly_what_it_names(secured: tuple[EcdProcess, Users]) -> None:
    node, users = secured
    got = {}
    for right, allowed in MATRIX.items():
        client = users.make(f"u{len(got)}", *([right] if right else []))
        try:
            outcomes = {probe: attempt(action) for probe, action in probes(client).items()}
        finally:
            users.admin.proc("resume", "proc1")
            client.close()
        got[right] = {probe for probe, outcome in outcomes.items() if outcome == "ok"}
        assert all(outcome == "403" for probe, outcome in outcomes.items() if probe not in got[right])
        assert got[right] == allowed | {"ls_calls", "whoami"}, right
    # the seed's message, and the exit code, on the command line
    env = {"EC_CONFIG_DIR": str(users.base / "u1")}
    proc = run_ecctl(node.listen or "", "--server-key", node.key, "add", "processor", "-n", "p", "-g",
                     "file:///nowhere", "-m", "m", env=env)
    assert proc.returncode == 1
    assert proc.stderr.decode() == "error: permission denied: u1 lacks ADD_PROCESSOR\n"


def test_a_role_gives_its_rights_and_taking_them_holds_at_once(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    joe = users.make("joe")
    assert attempt(lambda: joe.call("sample.tasks.do_this", "x")) == "403"
    users.admin.add_role("developer")
    users.admin.add_privilege("RUN_TASK", role="developer")
    users.admin.update_user("joe", add_roles=["developer"])
    assert joe.call("sample.tasks.do_this", "x").get(timeout=30) == "Do this: x"
    assert users.admin.ls_user("joe")["privileges"] == [
        {"right": "RUN_TASK", "via": "role developer", "created": users.admin.ls_user("joe")["privileges"][0]["created"],
         "by": "admin"}]
    users.admin.delete_privilege("RUN_TASK", role="developer")
    assert attempt(lambda: joe.call("sample.tasks.do_this", "x")) == "403"
    users.admin.update_user("joe", enabled=False)
    assert attempt(lambda: joe.whoami()) == "401"
    users.admin.update_user("joe", enabled=True)
    assert joe.whoami()["user"] == "joe"  # the client logs in again by itself
    users.admin.delete_user("joe")
    with pytest.raises(ServerError) as info:
        joe.whoami()
    assert info.value.code == 401 and "bad user name or password" in info.value.reason


def test_nobody_gives_rights_they_do_not_hold(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    granter = users.make("granter", "ADD_PRIVILEGE", "UPDATE_USER", "RUN_TASK")
    users.make("mallory")
    assert granter.add_privilege("RUN_TASK", user="mallory")["right"] == "RUN_TASK"
    for give in (lambda: granter.add_privilege("ALL", user="mallory"),
                 lambda: granter.add_privilege("ADD_USER", user="granter"),
                 lambda: granter.update_user("admin", password="taken-over!")):  # admin holds ALL
        with pytest.raises(ServerError) as info:
            give()
        assert info.value.code == 403, info.value
    users.admin.add_role("root")
    users.admin.add_privilege("ALL", role="root")
    with pytest.raises(ServerError) as info:
        granter.update_user("mallory", add_roles=["root"])
    assert info.value.code == 403 and "lacks ALL" in info.value.reason
    with pytest.raises(ServerError) as info:
        users.admin.add_privilege("NO_SUCH_RIGHT", user="mallory")
    assert info.value.code == 422 and "RUN_TASK" in info.value.reason  # the list of rights


def test_another_users_call_is_not_found(secured: tuple[EcdProcess, Users]) -> None:
    node, users = secured
    ann, bob = users.make("ann", "RUN_TASK"), users.make("bob", "RUN_TASK")
    mine = ann.call("sample.tasks.do_this", "ann's secret")
    assert mine.get(timeout=30) == "Do this: ann's secret"
    for look in (lambda: bob.result(mine.id, timeout=5), lambda: bob.ls_call(mine.id),
                 lambda: list(bob.stream(mine.id, timeout=5))):
        with pytest.raises(ServerError) as info:
            look()
        assert info.value.code == 404 and mine.id in info.value.reason
    with pytest.raises(ServerError) as info:  # re-sending another user's id: refused, not a duplicate
        bob.call("sample.tasks.do_this", "bob", call_id=mine.id)
    assert info.value.code == 409
    assert mine.id not in {c["id"] for c in bob.ls_calls(rows=100)["calls"]}
    assert mine.id in {c["id"] for c in ann.ls_calls(rows=100)["calls"]}
    assert all(c["user"] == "ann" for c in ann.ls_calls(rows=100)["calls"])
    assert users.admin.result(mine.id, timeout=5) == "Do this: ann's secret"  # READ (ALL) sees it
    with Client(node.endpoint) as local:  # so does the local administrator
        assert local.ls_call(mine.id)["user"] == "ann"


def test_the_audit_shows_changes_logins_and_denials(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    eve = users.make("eve")
    with pytest.raises(ServerError):
        eve.add_queue("evil")
    with pytest.raises(ServerError):
        users.client("eve", "not her password").login()
    rows = users.admin.ls_audit(200, user="eve")
    outcomes = [(row["op"], row["outcome"].split(":")[0]) for row in rows]
    assert ("add_queue", "denied (403)") in outcomes
    assert ("login", "ok") in outcomes and ("login", "denied (401)") in outcomes
    assert all(row["node"] == "n1" and row["time"] for row in rows)
    admin_rows = users.admin.ls_audit(200, user="admin")
    assert ("add_user", "user eve", "ok") in {(r["op"], r["object"], r["outcome"]) for r in admin_rows}
    assert not any("eve-password" in str(row) for row in users.admin.ls_audit(1000))


def test_sessions_expire_and_logouts_hold(ecd_factory: Callable[..., EcdProcess]) -> None:
    node = tcp_node(ecd_factory, "--session-ttl", "2")
    users = Users(node)
    try:
        sue = users.make("sue", "READ")
        assert sue.status()["node"]
        plain = users.client("sue", "")  # the same key, no password to log in again with
        plain._password = None
        wait_for(lambda: attempt(plain.whoami) == "401", 30, what="sue's login to expire")
        with pytest.raises(ServerError) as info:
            plain.whoami()
        assert "expired" in info.value.reason and "ecctl login" in info.value.reason
        assert sue.status()["node"]  # a client with the password logs in again by itself
        sue.logout()
        assert attempt(plain.status) == "401"
    finally:
        users.close()


def test_first_start_makes_one_admin_with_a_private_password(ecd_factory: Callable[..., EcdProcess]) -> None:
    node = tcp_node(ecd_factory)
    path = node.data_dir / "admin.password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 16 and password in node.log()  # logged once, NiFi-style
    assert stat.S_IMODE((node.data_dir / "keys" / "node.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((node.data_dir / "topology.db").stat().st_mode) == 0o600  # it holds the hashes
    node.terminate()
    node.start()
    assert path.read_text().strip() == password and node.log().count(password) == 1
    keys = subprocess.run([sys.executable, "-m", "ecd", "keys", "show", "--data-dir", str(node.data_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert keys.returncode == 0 and keys.stdout == node.key + "\n"
    with Client(node.endpoint) as local:
        assert local.status()["key"] == node.key and local.status()["insecure"] is False
        assert [u["name"] for u in local.ls_users()] == ["admin"] and local.ls_users()[0]["rights"] == ["ALL"]
        assert local.whoami()["kind"] == "local"


def test_insecure_serves_plain_tcp_on_loopback_only(ecd_factory: Callable[..., EcdProcess]) -> None:
    node = tcp_node(ecd_factory, "--insecure")
    assert node.listen
    with Client(node.listen, insecure=True) as plain:
        status = plain.status()  # no login: every tcp client is the administrator
        assert status["insecure"] is True and status["key"] is None
    assert "INSECURE" in node.log()
    proc = run_ecctl(node.listen, "status", env={"EC_INSECURE": "on"})
    assert proc.returncode == 0 and b"insecure: true" in proc.stdout
    exposed = subprocess.run([sys.executable, "-m", "ecd", "run", "--data-dir", str(node.data_dir.parent / "x"),
                              "--listen", "tcp://0.0.0.0:7999", "--insecure"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert exposed.returncode == 2 and "--insecure-bind-any" in exposed.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.one_of(st.sampled_from(sorted(r[6:] for r in __import__("ecd.access", fromlist=["RULES"]).RULES
                                           if r.startswith("admin:"))), st.text(min_size=1, max_size=20)),
       args=st.dictionaries(st.text(max_size=12), st.recursive(
           st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=30)
           | st.binary(max_size=30), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
           max_leaves=12), max_size=5))
def test_a_logged_in_but_hostile_client_never_takes_the_node_down(secured: tuple[EcdProcess, Users], op: str,
                                                                 args: dict[str, Any]) -> None:
    node, users = secured
    hostile = _hostile(users)
    try:
        hostile.admin(op, **args)
    except ServerError as exc:
        assert exc.code != 500, (op, args, exc)
    except Exception:  # noqa: BLE001 - a reply the client cannot use: the node must still live
        pass
    assert node.proc is not None and node.proc.poll() is None


_HOSTILE: dict[str, Client] = {}


def _hostile(users: Users) -> Client:
    if "c" not in _HOSTILE:
        _HOSTILE["c"] = users.make("hostile", "RUN_TASK", "ADD_QUEUE", "LS_QUEUES", "READ_LOG")
    return _HOSTILE["c"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(socket=st.one_of(st.just("sample.tasks.do_this"), st.text(min_size=1, max_size=40)),
       args=st.lists(st.none() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=40) | st.binary(max_size=40),
                     max_size=4),
       call_id=st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)))
def test_hostile_calls_never_take_the_node_down(secured: tuple[EcdProcess, Users], socket: str, args: list[Any],
                                               call_id: str) -> None:
    node, users = secured
    try:
        _hostile(users).submit(socket, args, call_id=call_id or None)
    except ServerError as exc:
        assert exc.code in (404, 409, 422), (socket, call_id, exc)
    assert node.proc is not None and node.proc.poll() is None


# ----------------------------------------------------------------------------- found by red-teaming


def test_admitting_a_node_key_needs_all(secured: tuple[EcdProcess, Users]) -> None:
    """A node key makes a mesh member (it holds copies of every user's calls): ADD_NODE, CREATE or
    UPDATE_NODE alone cannot register one, directly or through apply."""
    _node, users = secured
    rogue = users.make("rogue", "ADD_NODE", "UPDATE_NODE", "CREATE", "UPDATE")
    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    assert rogue.add("node", name="plain-node", cpus=2)["name"] == "plain-node"  # no key: fine
    for attempt_it in (lambda: rogue.add("node", name="rogue-node", key=key),
                       lambda: rogue.update("node", "plain-node", key=key),
                       lambda: rogue.apply({"nodes": [{"name": "rogue-node2", "key": key}]})):
        with pytest.raises(ServerError) as info:
            attempt_it()
        assert info.value.code == 403 and "lacks ALL" in info.value.reason
    assert {n["name"]: n.get("key") for n in users.admin.ls("nodes")}.get("plain-node") in ("", None)


def test_processor_rights_are_field_by_field(secured: tuple[EcdProcess, Users]) -> None:
    """EDIT_PROCESSOR_CONFIG tunes a processor; it cannot point it at other code (EDIT_PROCESSOR_CODE)
    nor pause or stop it (PAUSE_/STOP_PROCESSOR)."""
    _node, users = secured
    tuner = users.make("tuner", "EDIT_PROCESSOR_CONFIG")
    assert tuner.update("processor", "proc1", retry_delay=0.2)["retry_delay"] == 0.2
    for fields in ({"gitrepo": "file:///tmp/evil"}, {"module": "os"}, {"paused": True}, {"enabled": False}):
        with pytest.raises(ServerError) as info:
            tuner.update("processor", "proc1", **fields)
        assert info.value.code == 403, fields
    coder = users.make("coder", "EDIT_PROCESSOR_CODE")
    with pytest.raises(ServerError) as info:
        coder.update("processor", "proc1", concurrency=1)
    assert info.value.code == 403 and "EDIT_PROCESSOR_CONFIG" in info.value.reason


def test_a_new_password_or_disabling_ends_the_users_logins(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    for change in ({"password": "a-new-password"}, {"enabled": False}):
        name = f"victim{len(change['password']) if 'password' in change else 0}"
        victim = users.make(name, "READ")
        stolen = users.client(name, "")  # the same key pair, without the password
        stolen._password = None
        assert stolen.whoami()["user"] == name
        users.admin.update_user(name, **change)
        with pytest.raises(ServerError) as info:
            stolen.whoami()
        assert info.value.code == 401
        victim.close()
    users.admin.update_user("victim0", enabled=True)
    with pytest.raises(ServerError) as info:  # the right password of a disabled user says nothing more
        users.client("victim14", "victim14-password").login()
    assert info.value.reason == "bad user name or password"


def test_an_open_listen_ends_when_its_login_does(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    listener = users.make("listener", "READ_LOG")
    outcome: list[BaseException] = []

    def listen() -> None:
        try:
            for _event in listener.listen("", "task", ttl=600, timeout=120):
                pass
        except BaseException as exc:  # noqa: BLE001 - what ended it is the test's to see
            outcome.append(exc)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    wait_for(lambda: users.admin.status()["listen"]["listeners"] >= 1, 30, what="the listener subscribed")
    users.admin.delete_privilege("READ_LOG", user="listener")  # while it listens: it ends at once
    wait_for(lambda: outcome, 30, what="the listen to end")
    thread.join(10)
    assert isinstance(outcome[0], ServerError) and outcome[0].code == 403, outcome


def test_nobody_deletes_a_role_that_gives_more_than_they_hold(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    users.admin.add_role("admins")
    users.admin.add_privilege("ALL", role="admins")
    remover = users.make("remover", "DELETE_ROLE")
    with pytest.raises(ServerError) as info:
        remover.delete_role("admins")
    assert info.value.code == 403 and "lacks ALL" in info.value.reason
    applier = users.make("applier", "ADD_QUEUE")
    with pytest.raises(ServerError) as info:  # apply: the kinds first, before anything is read
        applier.apply({"sockets": [{"name": "x"}], "queues": [{"name": "fine"}]})
    assert info.value.code == 403 and "lacks ADD_SOCKET" in info.value.reason
    with pytest.raises(ServerError) as info:
        applier.apply({"queues": [{"name": "fine"}]}, prune=True)
    assert info.value.code == 403 and "lacks DELETE_QUEUE" in info.value.reason
    assert applier.apply({"queues": [{"name": "fine"}]})["changes"][0]["name"] == "fine"


def test_failed_logins_of_one_key_do_not_lock_others_out(secured: tuple[EcdProcess, Users]) -> None:
    _node, users = secured
    users.make("target")
    guesser = users.client("target", "wrong password")
    codes = [attempt_code(guesser.login) for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429  # this key waits a minute...
    assert users.client("target", "target-password", folder="elsewhere").login()["user"] == "target"  # ...not the user


def attempt_code(action: Callable[[], Any]) -> int:
    try:
        action()
    except ServerError as exc:
        return exc.code
    return 0
