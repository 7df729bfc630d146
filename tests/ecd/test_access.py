"""The authorization table and the write-authority rules, tested directly (pure logic).

* every request the daemon answers has exactly one rule, and SPEC.md prints the same table;
* each right allows what the table below (written by hand, not derived from the code) says;
* a principal comes from the transport: a node key, a session (expired, disabled, deleted), none;
* the peer-integrity rules keep who may give a node a copy of a call.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import protocol
from ecd import access, integrity
from ecd.access import ANONYMOUS, NODE, USER, Principal, authorize, resolve, rule_for
from ecd.accounts import RoleDef, SessionDef, UserDef
from ecd.admin import KINDS, _PROC_FIELDS
from ecd.errors import BadRequest, Forbidden, NotFound, Unauthorized
from ecd.topology import Topology
from ecd.useradmin import OPS

ROOT = Path(__file__).resolve().parents[2]


def test_every_admin_op_has_exactly_one_rule() -> None:
    ops = {f"{action}_{kind}" for kind in KINDS for action in ("add", "update", "delete")}
    ops |= {f"ls_{plural}" for plural in KINDS.values()}
    ops |= {f"proc_{action}" for action in (*_PROC_FIELDS, "restart", "remove")}
    ops |= {"apply", "export", "status", "node_drain", "node_undrain", "ls_calls", "ls_call"} | OPS
    ruled = {name[len("admin:"):] for name in access.RULES if name.startswith("admin:")}
    assert ruled == ops
    requests = {name for name in access.RULES if not name.startswith("admin:")}
    assert requests == {"PING", "CALL", "CALLS", "FLOW", "STREAM", "GET", "LISTEN"}
    named = {right for rule in access.RULES.values() for right in rule.any_of}
    assert named <= set(protocol.RIGHTS), named - set(protocol.RIGHTS)


def test_spec_prints_the_same_table() -> None:
    spec = (ROOT / "protocol" / "SPEC.md").read_text()
    section = spec.split("### Authorization", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, re.M))
    assert rows == {name: rule.describe() for name, rule in access.RULES.items()}


def user(*rights: str, name: str = "joe") -> Principal:
    return Principal(USER, name, "K" * 40, rights=frozenset(rights))


def allowed(principal: Principal, request: str) -> bool:
    try:
        authorize(principal, request, rule_for(request))
    except Forbidden:
        return False
    return True


#: right -> requests it allows among PROBES (written from the issue's list, not from RULES).
PROBES = ("CALL", "CALLS", "FLOW", "STREAM", "GET", "LISTEN", "admin:add_queue", "admin:update_queue",
          "admin:delete_queue", "admin:ls_queues", "admin:add_processor", "admin:update_processor",
          "admin:proc_pause", "admin:proc_resume", "admin:proc_start", "admin:proc_stop", "admin:proc_restart",
          "admin:proc_remove", "admin:export", "admin:status", "admin:node_drain", "admin:ls_audit",
          "admin:add_user", "admin:ls_users", "admin:ls_user", "admin:add_privilege", "admin:ls_calls",
          "admin:ls_call", "admin:whoami", "admin:logout", "admin:apply", "admin:mesh_keys")
LOGIN_ONLY = {"GET", "admin:ls_calls", "admin:ls_call", "admin:whoami", "admin:logout", "admin:apply",
              "admin:mesh_keys"}
EXPECTED = {
    "RUN_TASK": {"CALL", "CALLS", "FLOW", "STREAM"},
    "READ_LOG": {"LISTEN", "admin:ls_audit"},
    "ADD_QUEUE": {"admin:add_queue"},
    "UPDATE_QUEUE": {"admin:update_queue"},
    "DELETE_QUEUE": {"admin:delete_queue"},
    "LS_QUEUES": {"admin:ls_queues"},
    "READ_QUEUE": {"admin:ls_queues"},
    "ADD_PROCESSOR": {"admin:add_processor"},
    "EDIT_PROCESSOR_CONFIG": {"admin:update_processor"},  # per field: see test_field_rights
    "EDIT_PROCESSOR_CODE": {"admin:update_processor"},
    "PAUSE_PROCESSOR": {"admin:proc_pause"},
    "RESUME_PROCESSOR": {"admin:proc_resume"},
    "START_PROCESSOR": {"admin:proc_start", "admin:proc_restart"},
    "STOP_PROCESSOR": {"admin:proc_stop"},
    "DELETE_PROCESSOR": {"admin:proc_remove"},
    "READ": {"admin:export", "admin:status", "admin:ls_queues", "admin:ls_users", "admin:ls_user"},
    "CREATE": {"admin:add_queue", "admin:add_processor", "admin:add_user", "admin:add_privilege"},
    "UPDATE": {"admin:update_queue", "admin:update_processor", "admin:node_drain"},
    "DELETE": {"admin:delete_queue", "admin:proc_remove"},
    "READ_NODE": {"admin:status"},
    "UPDATE_NODE": {"admin:node_drain"},
    "ADD_USER": {"admin:add_user"},
    "LS_USERS": {"admin:ls_users"},
    "LS_USER": {"admin:ls_user"},
    "READ_USER": {"admin:ls_users", "admin:ls_user"},
    "ADD_PRIVILEGE": {"admin:add_privilege"},
    "LOCK_PROCESSOR": set(),
    "VIEW_PROCESSOR_CODE": set(),
    "DB_DROP": set(),
}


@pytest.mark.parametrize("right", sorted(EXPECTED))
def test_each_right_allows_exactly_its_requests(right: str) -> None:
    got = {request for request in PROBES if allowed(user(right), request)}
    assert got == EXPECTED[right] | LOGIN_ONLY


def test_all_allows_everything_and_nothing_allows_a_request_without_a_rule() -> None:
    assert all(allowed(user("ALL"), request) for request in access.RULES)
    with pytest.raises(NotFound, match="unknown admin op 'drop_everything'"):
        authorize(user("ALL"), "admin:drop_everything", rule_for("admin:drop_everything"))
    with pytest.raises(BadRequest):
        authorize(user("ALL"), "RESULT", rule_for("RESULT"))


def test_the_unauthenticated_may_ping_and_log_in_only() -> None:
    for principal in (Principal(ANONYMOUS, why="not logged in"), Principal(NODE, "n2", "K" * 40)):
        for request in access.RULES:
            if request in ("PING", "admin:login"):
                authorize(principal, request, rule_for(request))
            else:
                with pytest.raises(Unauthorized):
                    authorize(principal, request, rule_for(request))


def test_a_denial_names_the_user_and_the_right() -> None:
    with pytest.raises(Forbidden) as info:
        authorize(user("RUN_TASK"), "admin:add_processor", rule_for("admin:add_processor"))
    assert str(info.value) == "permission denied: joe lacks ADD_PROCESSOR" and info.value.code == 403


def test_calls_are_seen_by_their_user_or_with_read() -> None:
    assert access.can_see_call(user(), {"user": "joe"})
    assert not access.can_see_call(user(), {"user": "ann"})
    assert not access.can_see_call(user(), {})
    assert access.can_see_call(user("READ"), {"user": "ann"}) and access.can_see_call(user("ALL"), {})
    assert access.can_see_call(access.LOCAL_ADMIN, {"user": "ann"})


def topology(**sessions: SessionDef) -> Topology:
    users = {"joe": UserDef("1", "joe", None, True, roles=("dev",), rights=("ADD_QUEUE",)),
             "off": UserDef("2", "off", None, False, rights=("ALL",))}
    roles = {"dev": RoleDef("3", "dev", rights=("RUN_TASK",))}
    return Topology(version=1, users=users, roles=roles, sessions=dict(sessions))


def test_principals_come_from_the_key_of_the_connection() -> None:
    k1, k2, k3, k4 = ("1" * 40, "2" * 40, "3" * 40, "4" * 40)
    topo = topology(**{k1: SessionDef(k1, "joe", 0.0, 100.0), k2: SessionDef(k2, "joe", 0.0, 10.0),
                       k3: SessionDef(k3, "off", 0.0, 100.0), k4: SessionDef(k4, "gone", 0.0, 100.0)})
    joe = resolve(topo, k1, 50.0, {})
    assert (joe.kind, joe.name, joe.rights, joe.roles) == (USER, "joe", frozenset({"ADD_QUEUE", "RUN_TASK"}), ("dev",))
    assert resolve(topo, k2, 50.0, {}).why == "the login of joe expired"
    assert resolve(topo, k3, 50.0, {}).why == "user off is disabled"
    assert resolve(topo, k4, 50.0, {}).why == "user gone no longer exists"
    assert resolve(topo, "5" * 40, 50.0, {}).kind == ANONYMOUS
    assert resolve(topo, k1, 50.0, {k1: "n2"}).kind == NODE  # a node's key is a node's, whatever else


# ----------------------------------------------------------------------------- peer integrity


def rec(owner: str = "A", term: int = 0, state: str = "queued", replicas: tuple[str, ...] = ("B",),
        **more: object) -> dict[str, object]:
    return {"id": "c1", "owner": owner, "term": term, "state": state, "replicas": list(replicas),
            "created": 1000.0, **more}


DONE = "done"
CASES = [
    # (sender, incoming, current at node "A" unless owner says so, draining, allowed?)
    ("A", rec(), None, (), True),                                            # a new call from its owner
    ("B", rec(), None, (), False),                                           # a call the sender does not own
    ("A", rec(state=DONE), rec(), (), True),                                 # the owner writes its outcome
    ("B", rec(state=DONE), rec(), (), True),                                 # a holder relays it
    ("D", rec(state=DONE), rec(), (), False),                                # a member with no copy relays it
    ("B", rec(state=DONE, result=b"x"), rec(state=DONE), (), False),          # a relay rewrites a final
    ("A", rec(state=DONE, version=9), rec(state=DONE), (), True),             # the owner rewrites its final
    ("B", rec(owner="B", term=1), rec(), (), True),                          # a holder took it over
    ("B", rec(owner="B", term=1), rec(replicas=(), holders=["A", "B"]), (), True),  # after the owner lost it
    ("D", rec(owner="D", term=1), rec(), (), False),                         # a takeover by a non-holder
    ("D", rec(owner="D", term=1), rec(), ("A",), True),                      # a hand-off by a draining owner
    ("A", rec(owner="D", term=1), rec(), (), True),                          # the owner names its successor
    ("B", rec(owner="B", term=1, state=DONE), rec(state=DONE), (), True),     # run again after a takeover
    ("B", rec(owner="B", term=99, state=DONE), rec(state=DONE), (), True),    # (a holder is trusted)
    ("D", rec(owner="D", term=99, state=DONE), rec(state=DONE), (), False),   # a forged takeover
    ("B", rec(owner="Z", term=5, state=DONE), rec(owner="Z", state=DONE, replicas=("B",)), (), False),  # in my name
    ("D", rec(owner="D"), rec(), (), True),                                  # a rival, from itself
    ("D", rec(owner="D", created=-9000.0), rec(), (), False),                # ... accepted hours before
    ("D", rec(owner="D", state=DONE), rec(state=DONE), (), False),            # a rival over a final
    ("B", rec(owner="D", state=DONE), rec(state=DONE), (), True),             # ... relayed by its replica
    ("E", rec(owner="D"), rec(), (), False),                                 # a rival relayed by an outsider
    ("D", rec(term=0), rec(term=3, owner="B"), (), True),                    # older than the copy: loses anyway
]


@pytest.mark.parametrize(("sender", "incoming", "current", "draining", "ok"), CASES)
def test_who_may_give_a_node_a_copy(sender: str, incoming: dict, current: dict | None, draining: tuple[str, ...],
                                    ok: bool) -> None:
    me = "Z" if current is not None and current.get("owner") == "Z" else "A"
    why = integrity.refusal(sender, incoming, current, me, draining)
    assert (why == "") == ok, why


def test_field_rights_keep_code_keys_and_states_apart() -> None:
    from ecd.admin import field_rights

    assert field_rights("node", {"endpoint": "tcp://h:1"}) == []
    assert field_rights("node", {"key": "k" * 40}) == [(("ALL",), "its key")]
    needs = dict((field, rights) for rights, field in field_rights(
        "processor", {"name": "p", "concurrency": 2, "gitrepo": "x", "paused": True, "enabled": False}))
    assert needs == {"concurrency": ("EDIT_PROCESSOR_CONFIG", "UPDATE_PROCESSOR", "UPDATE"),
                     "gitrepo": ("EDIT_PROCESSOR_CODE", "UPDATE_PROCESSOR", "UPDATE"),
                     "paused": ("PAUSE_PROCESSOR", "UPDATE_PROCESSOR", "UPDATE"),
                     "enabled": ("STOP_PROCESSOR", "UPDATE_PROCESSOR", "UPDATE")}
