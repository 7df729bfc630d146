"""ecctl's network commands against the fake peer: what each verb sends and what it prints.

add/update/delete/ls for every kind, proc, ls calls paging, apply (files, stdin, errors before
any request) and export (back through apply unchanged), and the one-line 503 error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import protocol
from ecctl import spec
from ecctl.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, input: bytes | str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input)


def sent(fake: Any) -> list[tuple[str, dict]]:
    return [(m.op, m.args) for m in fake.of_type(protocol.Admin)]


def ok(*args: str, input: bytes | str | None = None) -> Any:
    result = run(*args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


# ------------------------------------------------------------------------------- add

ADDS = [
    (["add", "queue", "-n", "q1", "-t", "fanout", "--transient", "--max-length", "100",
      "--message-ttl", "60", "-d", "orders"],
     "add_queue", {"name": "q1", "type": "fanout", "durable": False, "max_length": 100,
                   "message_ttl": 60, "description": "orders"},
     "added queue q1 (fanout)"),
    (["add", "queue", "-n", "q2"], "add_queue", {"name": "q2", "type": "direct"}, "added queue q2 (direct)"),
    (["add", "node", "-n", "n1", "--endpoint", "tcp://10.0.0.1:7700", "--cpus", "8"],
     "add_node", {"name": "n1", "endpoint": "tcp://10.0.0.1:7700", "cpus": 8},
     "added node n1 (tcp://10.0.0.1:7700)"),
    (["add", "node", "-n", "n2"], "add_node", {"name": "n2"}, "added node n2"),
    (["add", "node", "-n", "n3", "--key", "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"], "add_node",
     {"name": "n3", "key": "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"}, "added node n3"),
    (["add", "processor", "-n", "p1", "-g", "https://example.com/r.git", "-m", "pkg.mod", "--tag", "v1.2",
      "--rate-limit", "10/s", "--disabled", "--timelimit", "2.5"],
     "add_processor", {"name": "p1", "gitrepo": "https://example.com/r.git", "module": "pkg.mod",
                       "concurrency": 1, "retries": 0, "retry_delay": 1.0, "tag": "v1.2",
                       "rate_limit": "10/s", "enabled": False, "timelimit": 2.5},
     "added processor p1"),
    (["add", "socket", "-n", "s1", "-q", "q1", "-pn", "p1", "-t", "tick", "--interval", "5",
      "-d", "ticker"],
     "add_socket", {"name": "s1", "queue": "q1", "processor": "p1", "function": "tick",
                    "interval": 5.0, "description": "ticker"},
     "added socket s1 (p1.tick on queue q1)"),
    (["add", "socket", "-n", "s2", "-q", "q1", "-pn", "p1", "-t", "f", "--cron", "*/5 * * * *"],
     "add_socket", {"name": "s2", "queue": "q1", "processor": "p1", "function": "f",
                    "cron": "*/5 * * * *"},
     "added socket s2 (p1.f on queue q1)"),
    (["add", "plug", "-n", "pl1", "--source", "s1", "--target", "s2", "--argument", "one",
      "--type", "error", "-q", "q1"],
     "add_plug", {"name": "pl1", "source": "s1", "target": "s2", "argument": "one", "type": "ERROR",
                  "queue": "q1"},
     "added plug pl1 (s1 -> s2, ERROR on queue q1)"),
    (["add", "plug", "-n", "pl2", "--source", "s1", "--target", "s2", "-q", "q1"],
     "add_plug", {"name": "pl2", "source": "s1", "target": "s2", "type": "RESULT", "queue": "q1"},
     "added plug pl2 (s1 -> s2, RESULT on queue q1)"),
    (["add", "deployment", "-n", "d1", "--processor", "p1", "--node", "n1", "--cpus", "2"],
     "add_deployment", {"name": "d1", "processor": "p1", "node": "n1", "cpus": 2},
     "added deployment d1 (p1 on node n1)"),
    (["add", "deployment", "-n", "d2", "-pn", "p1", "--node", "n1"],
     "add_deployment", {"name": "d2", "processor": "p1", "node": "n1"},
     "added deployment d2 (p1 on node n1)"),
    (["add", "flow", "-n", "f1", "-p", "p1", "-p", "p2", "-d", "two steps"],
     "add_flow", {"name": "f1", "processors": ["p1", "p2"], "description": "two steps"},
     "added flow f1 (2 processor(s))"),
    (["add", "flow", "-n", "f2"], "add_flow", {"name": "f2"}, "added flow f2 (0 processor(s))"),
]


@pytest.mark.parametrize(("argv", "op", "args", "line"), ADDS, ids=[" ".join(a[0][:2]) for a in ADDS])
def test_add_sends_fields(fake, argv: list[str], op: str, args: dict, line: str) -> None:  # type: ignore[no-untyped-def]
    result = ok(*argv)
    assert sent(fake) == [(op, args)]
    assert result.stdout == line + "\n"


def test_add_plural_alias_and_json(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["add_node"] = {"name": "n1", "cpus": 1, "endpoint": "", "version": "", "last_seen": 0}
    result = ok("add", "nodes", "-n", "n1", "--json")
    assert json.loads(result.stdout) == fake.admin["add_node"]
    assert sent(fake) == [("add_node", {"name": "n1"})]


@pytest.mark.parametrize("argv", [
    ["add", "processor", "-n", "p", "-g", "g", "-m", "m", "--commit", "abc", "--tag", "v1"],
    ["add", "processor", "-n", "p", "-g", "g"],                      # -m required
    ["add", "socket", "-n", "s", "-q", "q", "-pn", "p"],              # -t required
    ["add", "plug", "-n", "x", "--source", "a", "--target", "b"],     # -q required
    ["add", "plug", "-n", "x", "--source", "a", "--target", "b", "-q", "q", "--type", "MAYBE"],
    ["add", "deployment", "-n", "d", "--processor", "p"],             # --node required
    ["add", "deployment", "-n", "d", "--processor", "p", "--node", "n", "--cpus", "0"],
    ["add", "node", "-n", "n", "--cpus", "many"],
    ["add", "queue", "-n", "q", "--max-length", "-1"],
    ["add", "socket", "-n", "s", "-q", "q", "-pn", "p", "-t", "f", "--interval", "0"],
    ["add", "widget", "-n", "w"],
])
def test_add_usage_errors_send_nothing(fake, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert sent(fake) == []


# ---------------------------------------------------------------------------- update

UPDATES = [
    (["update", "processor", "-n", "p1", "-c", "3"], "update_processor",
     {"name": "p1", "concurrency": 3}, "updated processor p1: concurrency=3"),
    (["update", "processor", "-n", "p1", "--disabled", "--tag", "v2", "--commit", "none"],
     "update_processor", {"name": "p1", "enabled": False, "tag": "v2", "commit": None},
     "updated processor p1: commit=none, tag=v2, enabled=false"),
    (["update", "processor", "-n", "p1", "--enabled", "--timelimit", "NONE", "-rq", "six\nrequests"],
     "update_processor", {"name": "p1", "enabled": True, "timelimit": None, "requirements": "six\nrequests"},
     'updated processor p1: timelimit=none, requirements="six\\nrequests", enabled=true'),
    (["update", "queue", "-n", "q1", "--durable", "--max-length", "none"], "update_queue",
     {"name": "q1", "durable": True, "max_length": None}, "updated queue q1: durable=true, max_length=none"),
    (["update", "node", "-n", "n1", "--cpus", "4"], "update_node", {"name": "n1", "cpus": 4},
     "updated node n1: cpus=4"),
    (["update", "socket", "-n", "s1", "--cron", "0 * * * *", "--interval", "none"], "update_socket",
     {"name": "s1", "cron": "0 * * * *", "interval": None},
     'updated socket s1: interval=none, cron="0 * * * *"'),
    (["update", "plug", "-n", "pl1", "--argument", "two", "--type", "RESULT"], "update_plug",
     {"name": "pl1", "argument": "two", "type": "RESULT"}, "updated plug pl1: argument=two, type=RESULT"),
    (["update", "deployment", "-n", "d1", "--cpus", "none"], "update_deployment",
     {"name": "d1", "cpus": None}, "updated deployment d1: cpus=none"),
    (["update", "flows", "-n", "f1", "-p", "p3"], "update_flow", {"name": "f1", "processors": ["p3"]},
     "updated flow f1: processors=[p3]"),
    (["update", "flow", "-n", "f1", "-d", "new words"], "update_flow",
     {"name": "f1", "description": "new words"}, 'updated flow f1: description="new words"'),
]


@pytest.mark.parametrize(("argv", "op", "args", "line"), UPDATES, ids=[" ".join(u[0][:2]) for u in UPDATES])
def test_update_sends_only_given_options(fake, argv: list[str], op: str, args: dict, line: str) -> None:  # type: ignore[no-untyped-def]
    result = ok(*argv)
    assert sent(fake) == [(op, args)]
    assert result.stdout == line + "\n"


def test_update_refusals(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("update", "processor", "-n", "p1")
    assert result.exit_code == 2 and "nothing to change" in result.output
    assert run("update", "processor", "-c", "2").exit_code == 2                # -n required
    assert run("update", "processor", "-n", "p", "--commit", "a", "--tag", "b").exit_code == 2
    assert run("update", "queue", "-n", "q", "--type", "none").exit_code == 2   # type is not optional
    assert sent(fake) == []
    fake.admin["update_processor"] = protocol.Error(code=404, reason="unknown processor 'p9'")
    result = run("update", "processor", "-n", "p9", "-c", "2")
    assert result.exit_code == 1 and result.stderr == "error: unknown processor 'p9'\n"


# ---------------------------------------------------------------------------- delete

@pytest.mark.parametrize("kind", ["queue", "node", "processor", "socket", "plug", "deployment", "flow"])
def test_delete_every_kind(fake, kind: str) -> None:  # type: ignore[no-untyped-def]
    fake.admin[f"delete_{kind}"] = {"name": "x1"}
    result = ok("delete", kind, "-n", "x1")
    assert result.stdout == f"deleted {kind} x1\n"
    assert sent(fake) == [(f"delete_{kind}", {"name": "x1"})]


def test_delete_still_referenced(fake) -> None:  # type: ignore[no-untyped-def]
    reason = "processor 'p1' is used by socket(s): s1, s2; deployment(s): d1; flow(s): f1"
    fake.admin["delete_processor"] = protocol.Error(code=409, reason=reason)
    result = run("delete", "processor", "-n", "p1")
    assert result.exit_code == 1 and result.stderr == f"error: {reason}\n" and result.stdout == ""


# -------------------------------------------------------------------------------- ls

LISTINGS = {
    "queue": ([{"name": "q1", "type": "topic", "depth": 4, "durable": False, "max_length": 10,
                "message_ttl": 30}], ["Name", "Type", "Depth", "Durable", "Max", "length", "TTL"],
              ["q1", "topic", "4", "no", "10", "30"]),
    "node": ([{"name": "n1", "endpoint": "", "cpus": 2, "version": "", "last_seen": 0}],
             ["Name", "State", "CPUs", "Busy", "Depth", "Load", "Mem", "Disk", "Endpoint"],
             ["n1", "-", "2", "-", "-", "-", "-", "-", "-"]),
    "processor": ([{"name": "p1", "status": "paused", "concurrency": 2, "module": "m", "gitrepo": "g",
                    "resolved_commit": "abc", "reason": ""}],
                  ["Name", "Status", "Concurrency", "Module", "Gitrepo", "Commit", "Reason"],
                  ["p1", "paused", "2", "m", "g", "abc", "-"]),
    "socket": ([{"name": "s1", "processor": "p1", "function": "f", "queue": "q1", "depth": 0,
                 "interval": 2.5, "cron": None}],
               ["Name", "Processor", "Function", "Queue", "Depth", "Schedule"],
               ["s1", "p1", "f", "q1", "0", "every", "2.5s"]),
    "plug": ([{"name": "pl1", "source": "s1", "target": "s2", "argument": None, "type": "RESULT",
               "queue": "q1"}], ["Name", "Source", "Target", "Argument", "Type", "Queue"],
             ["pl1", "s1", "s2", "-", "RESULT", "q1"]),
    "deployment": ([{"name": "d1", "processor": "p1", "node": "n1", "cpus": None}],
                   ["Name", "Processor", "Node", "CPUs"], ["d1", "p1", "n1", "-"]),
    "flow": ([{"name": "f1", "processors": ["p1", "p2"], "description": "demo"}],
             ["Name", "Processors", "Description"], ["f1", "p1,", "p2", "demo"]),
}


@pytest.mark.parametrize("kind", list(LISTINGS))
def test_ls_every_kind_singular_and_plural(fake, kind: str) -> None:  # type: ignore[no-untyped-def]
    items, headers, row = LISTINGS[kind]
    fake.admin[f"ls_{kind}s"] = items
    for name in (kind, f"{kind}s"):
        lines = ok("ls", name).stdout.splitlines()
        assert lines[0].split() == headers
        assert set(lines[1]) <= {"-", " "}
        assert lines[2].split() == row
    assert json.loads(ok("ls", kind, "--json").stdout) == items
    assert json.loads(ok("--json", "ls", f"{kind}s").stdout) == items
    assert sent(fake) == [(f"ls_{kind}s", {})] * 4


def test_ls_nodes_mesh_columns(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["ls_nodes"] = [{"name": "n1", "state": "draining", "cpus": 8, "busy": 3, "depth": 12,
                               "load": 12.4, "memory": 55.5, "disk": 7.6, "endpoint": "tcp://h:7700",
                               "version": "0.3.0", "last_seen": 1700000000.5, "node_id": "u-1"}]
    line = ok("ls", "nodes").stdout.splitlines()[2]
    assert line.split() == ["n1", "draining", "8", "3", "12", "12%", "56%", "8%", "tcp://h:7700"]


def test_ls_unknown_kind(fake) -> None:  # type: ignore[no-untyped-def]
    result = run("ls", "widgets")
    assert result.exit_code == 2 and "widgets" in result.output
    assert sent(fake) == []


# ------------------------------------------------------------------------------ proc

@pytest.mark.parametrize(("action", "line"), [
    ("pause", "paused processor p1 (calls keep queueing)"),
    ("resume", "resumed processor p1"),
    ("stop", "stopped processor p1 (its workers end; calls keep queueing)"),
    ("start", "started processor p1"),
    ("restart", "restarted processor p1 (its workers are replaced)"),
])
def test_proc_actions(fake, action: str, line: str) -> None:  # type: ignore[no-untyped-def]
    fake.admin[f"proc_{action}"] = {"name": "p1", "status": "running"}
    assert ok("proc", action, "-n", "p1").stdout == line + "\n"
    assert json.loads(ok("proc", action, "--name", "p1", "--json").stdout) == fake.admin[f"proc_{action}"]
    assert sent(fake) == [(f"proc_{action}", {"name": "p1"})] * 2


def test_proc_remove_lists_what_went(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["proc_remove"] = {"processor": "p1", "sockets": ["s1", "s2"], "plugs": [],
                                 "deployments": ["d1"], "flows": ["f1"]}
    result = ok("proc", "remove", "-n", "p1")
    assert result.stdout == ("removed processor p1\n  sockets: s1, s2\n  deployments: d1\n"
                             "  flows (membership): f1\n")
    fake.admin["proc_remove"] = {"processor": "p2", "sockets": [], "plugs": [], "deployments": [], "flows": []}
    assert ok("proc", "remove", "-n", "p2").stdout == "removed processor p2\n"
    assert sent(fake) == [("proc_remove", {"name": "p1"}), ("proc_remove", {"name": "p2"})]


def test_proc_usage(fake) -> None:  # type: ignore[no-untyped-def]
    assert run("proc", "pause").exit_code == 2
    assert run("proc", "explode", "-n", "p1").exit_code == 2
    assert sent(fake) == []


# ------------------------------------------------------------------------- ls calls

def _calls(n: int) -> list[dict]:
    return [{"id": f"id-{i}", "socket": "s1", "state": "done", "attempts": 1, "created": 1700000000.0 + i,
             "started": None, "finished": None, "node": "n1"} for i in range(n)]


def test_ls_calls_sends_page_rows_and_prints_footer(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["ls_calls"] = {"total": 3830, "page": 1, "pages": 383, "rows": 10, "calls": _calls(10),
                              "source": "history"}
    result = ok("ls", "calls")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["Page", "Row", "ID"]
    assert len(lines) == 2 + 10 + 1
    assert lines[-1] == "Page 1 of 383 of 3830 total records"
    ok("ls", "calls", "-p", "3", "-r", "25", "-u", "-s", "s1")
    ok("ls", "calls", "--page", "2", "--rows", "5", "--unfinished", "--socket", "s2")
    assert sent(fake) == [
        ("ls_calls", {"page": 1, "rows": 10, "unfinished": False}),
        ("ls_calls", {"page": 3, "rows": 25, "unfinished": True, "socket": "s1"}),
        ("ls_calls", {"page": 2, "rows": 5, "unfinished": True, "socket": "s2"}),
    ]


def test_ls_calls_page_from_reply_and_empty(fake) -> None:  # type: ignore[no-untyped-def]
    fake.admin["ls_calls"] = {"total": 12, "page": 2, "pages": 2, "rows": 10, "calls": _calls(2)}
    result = ok("ls", "calls", "-p", "9")      # past the end: the daemon answers its last page
    lines = result.stdout.splitlines()
    assert lines[2].split()[:3] == ["2", "1", "id-0"]
    assert lines[-1] == "Page 2 of 2 of 12 total records"
    fake.admin["ls_calls"] = {"total": 0, "page": 1, "pages": 1, "rows": 10, "calls": []}
    assert ok("ls", "calls").stdout.splitlines()[-1] == "Page 1 of 1 of 0 total records"
    fake.admin["ls_calls"] = {"total": 0, "page": 1, "pages": 0, "rows": 10, "calls": []}
    assert ok("ls", "calls").stdout.splitlines()[-1] == "Page 1 of 0 of 0 total records"
    assert json.loads(ok("ls", "calls", "--json").stdout)["pages"] == 0
    assert run("ls", "calls", "-p", "0").exit_code == 2


# ----------------------------------------------------------------------------- apply

NETWORK = """\
queues:
  - {name: q1, type: direct}
processors:
  - name: p1
    gitrepo: https://example.com/r.git
    module: pkg.tasks
    concurrency: 2
sockets:
  s1: {processor: p1, function: f, queue: q1}
"""
PARSED = {"queues": [{"name": "q1", "type": "direct"}],
          "processors": [{"name": "p1", "gitrepo": "https://example.com/r.git", "module": "pkg.tasks",
                          "concurrency": 2}],
          "sockets": {"s1": {"processor": "p1", "function": "f", "queue": "q1"}}}
CHANGES = [
    {"action": "add", "kind": "queue", "name": "q1", "fields": {"type": [None, "direct"]}},
    {"action": "update", "kind": "processor", "name": "p1",
     "fields": {"concurrency": [1, 2], "description": ["old text", None]}},
    {"action": "delete", "kind": "socket", "name": "s9", "fields": {}},
]
DIFF = ["+ queue q1", '~ processor p1: concurrency 1 -> 2, description "old text" -> none', "- socket s9"]


def test_apply_yaml_prints_diff(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "network.yaml"
    path.write_text(NETWORK)
    fake.admin["apply"] = {"changes": CHANGES, "applied": True, "version": 7}
    result = ok("apply", "-f", str(path))
    assert result.stdout.splitlines() == [*DIFF, "applied 3 change(s)"]
    assert sent(fake) == [("apply", {"spec": PARSED, "dry_run": False, "prune": False})]


def test_apply_dry_run_prune_and_json(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "network.yml"
    path.write_text(NETWORK)
    fake.admin["apply"] = {"changes": CHANGES, "applied": False, "version": 6}
    result = ok("apply", "-f", str(path), "--dry-run", "--prune")
    assert result.stdout.splitlines() == [*DIFF, "would apply 3 change(s) (dry run)"]
    assert json.loads(ok("apply", "-f", str(path), "--json").stdout) == fake.admin["apply"]
    fake.admin["apply"] = {"changes": [], "applied": True, "version": 6}
    assert ok("apply", "-f", str(path)).stdout == "no changes\n"
    assert ok("apply", "-f", str(path), "--dry-run").stdout == "no changes\n"
    assert [args for _, args in sent(fake)] == [
        {"spec": PARSED, "dry_run": True, "prune": True},
        {"spec": PARSED, "dry_run": False, "prune": False},
        {"spec": PARSED, "dry_run": False, "prune": False},
        {"spec": PARSED, "dry_run": True, "prune": False},
    ]


def test_apply_toml_json_and_stdin(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake.admin["apply"] = {"changes": [], "applied": True, "version": 1}
    toml = tmp_path / "network.toml"
    toml.write_text('[[queues]]\nname = "q1"\ntype = "direct"\n\n[sockets.s1]\nprocessor = "p1"\n'
                    'function = "f"\nqueue = "q1"\n')
    as_json = tmp_path / "network.json"
    as_json.write_text(json.dumps(PARSED))
    ok("apply", "-f", str(toml))
    ok("apply", "-f", str(as_json))
    ok("apply", "-f", "-", input=NETWORK)
    ok("apply", "-f", "-", "--format", "json", input=json.dumps(PARSED))
    specs = [args["spec"] for _, args in sent(fake)]
    assert specs[0] == {"queues": [{"name": "q1", "type": "direct"}], "sockets": PARSED["sockets"]}
    assert specs[1:] == [PARSED, PARSED, PARSED]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("net.yaml", "queue:\n  - {name: q1}\n", "net.yaml: unknown top-level key 'queue' (did you mean 'queues'?)"),
    ("net.yaml", "queues: [{name: q1}\n", "net.yaml: invalid YAML at line 2, column 1"),
    ("net.toml", "[[queues]\n", "net.toml: invalid TOML"),
    ("net.json", "{'queues': []}", "net.json: invalid JSON at line 1, column 2"),
    ("net.yaml", "processors: [{name: p1, commit: 1234567}]\n", "net.yaml: processors[0].commit: expected text"),
])
def test_apply_bad_file_exit_2_without_a_request(fake, tmp_path: Path, name: str, text: str,  # type: ignore[no-untyped-def]
                                                 message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = run("apply", "-f", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path}/{message}")
    assert len(result.stderr.splitlines()) == 1
    assert fake.received == []


def test_apply_bad_file_never_looks_for_the_daemon(short_dir: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("EC_ENDPOINT", f"ipc://{short_dir}/nobody.sock")
    result = run("apply", "-f", "-", input="widgets: []\n")
    assert result.exit_code == 2
    assert result.stderr == ("error: <stdin>: unknown top-level key 'widgets'; expected: queues, nodes, "
                             "processors, sockets, plugs, deployments, flows\n")
    result = run("apply", "-f", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}/absent.yaml: cannot read: No such file or directory\n"
    assert run("apply").exit_code == 2                                      # -f is required


# ---------------------------------------------------------------------------- export

EXPORT = {
    "queues": [{"name": "q1", "type": "direct", "durable": True, "max_length": None, "message_ttl": None,
                "description": None}],
    "nodes": [{"name": "n1", "endpoint": "tcp://10.0.0.1:7700", "cpus": 8, "description": None}],
    "processors": [{"name": "p1", "gitrepo": "https://example.com/r.git", "module": "pkg.tasks",
                    "branch": None, "commit": "0123456", "tag": None, "requirements": "six\nrequests\n",
                    "concurrency": 2, "retries": 0, "retry_delay": 1.0, "timelimit": None,
                    "rate_limit": "5/m", "description": "yes: it is", "enabled": True, "paused": False}],
    "sockets": [{"name": "s1", "processor": "p1", "function": "f", "queue": "q1", "interval": None,
                 "cron": None, "description": None}],
    "plugs": [], "deployments": [],
    "flows": [{"name": "f1", "description": None, "processors": ["p1"]}],
}


def test_export_yaml_goes_back_through_apply_unchanged(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake.admin["export"] = EXPORT
    result = ok("export")
    assert result.stdout.startswith("queues:\n  - name: q1\n")
    assert spec.parse(result.stdout, "yaml", "<export>") == EXPORT
    path = tmp_path / "network.yaml"
    path.write_text(result.stdout)
    fake.admin["apply"] = {"changes": [], "applied": True, "version": 3}
    assert ok("apply", "-f", str(path)).stdout == "no changes\n"
    ok("apply", "-f", "-", input=result.stdout)
    assert sent(fake) == [("export", {}),
                          ("apply", {"spec": EXPORT, "dry_run": False, "prune": False}),
                          ("apply", {"spec": EXPORT, "dry_run": False, "prune": False})]


def test_export_json(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake.admin["export"] = EXPORT
    text = ok("export", "--format", "json").stdout
    assert json.loads(text) == EXPORT
    assert ok("export", "--json").stdout == text
    path = tmp_path / "network.json"
    path.write_text(text)
    fake.admin["apply"] = {"changes": [], "applied": True, "version": 3}
    ok("apply", "-f", str(path))
    assert sent(fake)[-1] == ("apply", {"spec": EXPORT, "dry_run": False, "prune": False})
    assert run("export", "--format", "toml").exit_code == 2


# ---------------------------------------------------------------------------- errors

def test_store_unavailable_is_one_line_exit_1(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reason = ('topology store unavailable: connection to server at "127.0.0.1", port 5432 failed: '
              'Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n')
    line = ('error: topology store unavailable: connection to server at "127.0.0.1", port 5432 failed: '
            'Connection refused Is the server running on that host and accepting TCP/IP connections?\n')
    error = protocol.Error(code=protocol.E_UNAVAILABLE, reason=reason)
    for op in ("ls_queues", "add_queue", "update_queue", "delete_queue", "proc_pause", "apply", "export",
               "ls_calls"):
        fake.admin[op] = error
    path = tmp_path / "n.yaml"
    path.write_text("queues: []\n")
    for argv in (["ls", "queues"], ["add", "queue", "-n", "q"], ["update", "queue", "-n", "q", "--durable"],
                 ["delete", "queue", "-n", "q"], ["proc", "pause", "-n", "p"], ["apply", "-f", str(path)],
                 ["export"], ["ls", "calls"]):
        result = run(*argv)
        assert result.exit_code == 1, argv
        assert result.stdout == ""
        assert result.stderr == line, argv


# ------------------------------------------------------------------------ subprocess

def test_subprocess_apply_from_a_pipe_and_export(fake) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fake.admin["apply"] = {"changes": CHANGES[:1], "applied": True, "version": 2}
    proc = subprocess.run([sys.executable, "-m", "ecctl", "apply", "-f", "-"], input=NETWORK.encode(),
                          env=env, capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["+ queue q1", "applied 1 change(s)"]
    fake.admin["export"] = EXPORT
    proc = subprocess.run([sys.executable, "-m", "ecctl", "export"], env=env, capture_output=True,
                          timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert spec.parse(proc.stdout.decode(), "yaml", "<pipe>") == EXPORT
    proc = subprocess.run([sys.executable, "-m", "ecctl", "apply", "-f", "-"], input=b"queues: [\n",
                          env=env, capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.decode().startswith("error: <stdin>: invalid YAML at line 2")
    assert sent(fake) == [("apply", {"spec": PARSED, "dry_run": False, "prune": False}), ("export", {})]
