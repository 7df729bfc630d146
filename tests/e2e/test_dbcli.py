"""End-to-end tests of ``ecd db init|migrate|drop|dump``: the installed ``ecd`` console script run
in a subprocess against a SQLite file and a database of the throwaway PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, free_port

#: The console script pip installed next to the interpreter running the tests.
ECD = Path(sys.executable).parent / "ecd"


@pytest.fixture(scope="module", autouse=True)
def _console_script() -> None:
    if not ECD.exists():
        pytest.fail(f"the ecd console script is not installed at {ECD} (pip install -e .)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'topology.db'}"
    return request.getfixturevalue("postgres").new_database()


def ecd_db(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``ecd db ARGS`` with no EC_* settings of the caller's leaking in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EC_")}
    return subprocess.run([str(ECD), "db", *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})}, cwd=ROOT, stdin=subprocess.DEVNULL)


def ok(*args: str, **kwargs: Any) -> str:
    result = ecd_db(*args, **kwargs)
    assert result.returncode == 0, f"ecd db {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


def dump(url: str) -> dict[str, Any]:
    return json.loads(ok("dump", "--db", url))


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, f"{result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_init_on_an_empty_database_then_migrate_is_a_no_op(db_url: str) -> None:
    out = ok("init", "--db", db_url)
    revision = out.strip().rsplit(" ", 1)[-1]
    assert "at revision" in out and revision
    assert "already at head " + revision in ok("migrate", "--db", db_url)
    assert "already at head " + revision in ok("migrate", "--db", db_url)
    assert "at revision " + revision in ok("init", "--db", db_url)  # init again: idempotent
    assert dump(db_url)["revision"] == revision


def test_migrate_creates_an_empty_database(db_url: str) -> None:
    out = ok("migrate", "--db", db_url)
    assert "upgraded from no revision to" in out
    assert "already at head" in ok("migrate", "--db", db_url)


def test_dump_is_json_with_the_network_nodes_and_history(db_url: str) -> None:
    from ecd.history import HistoryStore
    from ecd.topology import TopologyStore

    ok("init", "--db", db_url)
    empty = dump(db_url)
    assert set(empty) == {"revision", "version", "network", "nodes", "history"}
    assert isinstance(empty["version"], int) and isinstance(empty["network"], dict)
    assert empty["nodes"] == [] and empty["history"] == {"calls": 0}

    store = TopologyStore(db_url)
    try:
        store.add("queue", name="q1")
        store.register_node("n1", "tcp://127.0.0.1:7700", 4, "0.1.0")
        HistoryStore(store.engine).write([
            {"id": f"c{i}", "seq": i, "owner": "o", "node": "n1", "socket": "s", "processor": "p",
             "function": "f", "state": "done", "attempts": 1, "created": float(i), "started": float(i),
             "finished": float(i) + 1, "worker": None, "error": None, "parent": None, "root": f"c{i}",
             "events": [["received", float(i), "r"]]}
            for i in range(3)
        ])
        expected_version = store.version()
        expected_network = store.export()
    finally:
        store.engine.dispose()
    full = dump(db_url)
    assert full["version"] == expected_version > empty["version"]
    assert full["network"] == json.loads(json.dumps(expected_network))
    assert [q["name"] for q in full["network"]["queues"]] == ["q1"]
    assert [(n["name"], n["endpoint"], n["cpus"]) for n in full["nodes"]] == [("n1", "tcp://127.0.0.1:7700", 4)]
    assert full["history"] == {"calls": 3}


def test_drop_refuses_without_yes(db_url: str) -> None:
    ok("init", "--db", db_url)
    line = one_line_error(ecd_db("drop", "--db", db_url), 2)
    assert "--yes" in line
    assert dump(db_url)["revision"]  # nothing was dropped


def test_drop_then_init_again(db_url: str) -> None:
    from ecd.topology import TopologyStore

    revision = ok("init", "--db", db_url).strip().rsplit(" ", 1)[-1]
    store = TopologyStore(db_url)
    try:
        store.add("queue", name="q1")
    finally:
        store.engine.dispose()
    out = ok("drop", "--yes", "--db", db_url)
    dropped = out.split(": ")[-1].strip().split(", ")
    assert {"alembic_version", "call", "queue", "processor", "socket"} <= set(dropped)
    line = one_line_error(ecd_db("dump", "--db", db_url), 1)
    assert "no schema" in line
    assert "upgraded from no revision to " + revision in ok("migrate", "--db", db_url)
    again = dump(db_url)
    assert again["revision"] == revision
    assert again["network"].get("queues", []) == [] and again["history"] == {"calls": 0}
    # dropping an empty database is fine too
    ok("drop", "--yes", "--db", db_url)
    ok("drop", "--yes", "--db", db_url)


def test_drop_leaves_tables_that_are_not_ours(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ok("init", "--db", url)
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        conn.execute("CREATE TABLE someone_elses (x INTEGER)")
    conn.close()
    out = ok("drop", "--yes", "--db", url)
    assert "someone_elses" in out and "left alone" in out
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert names == {"someone_elses"}


@pytest.mark.parametrize("command", ["init", "migrate", "dump", "drop --yes"])
def test_unreachable_postgresql_is_one_line_and_exit_1(command: str) -> None:
    url = f"postgresql://ec@127.0.0.1:{free_port()}/nothing?connect_timeout=5"
    line = one_line_error(ecd_db(*command.split(), "--db", url), 1)
    assert line.startswith("ecd db: ") and "unavailable" in line


@pytest.mark.parametrize("command", ["init", "migrate", "dump"])
def test_unusable_sqlite_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = one_line_error(ecd_db(command, "--db", f"sqlite:///{blocker / 'topology.db'}"), 1)
    assert line.startswith("ecd db: ")


def test_bad_url_is_one_line_and_exit_1() -> None:
    line = one_line_error(ecd_db("dump", "--db", "nosuchdriver://x/y"), 1)
    assert line.startswith("ecd db: ")


def test_default_database_is_the_daemons(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # not made yet: init makes it, like a fresh node's
    out = ok("init", "--data-dir", str(data_dir))
    assert (data_dir / "topology.db").is_file()
    assert str(data_dir / "topology.db") in out
    via_env = tmp_path / "env.db"
    ok("init", env={"EC_DB": f"sqlite:///{via_env}"})
    assert via_env.is_file()
    config = tmp_path / "ecd.toml"
    config.write_text(f'db = "sqlite:///{tmp_path / "conf.db"}"\n')
    ok("init", "--config", str(config))
    assert (tmp_path / "conf.db").is_file()
    assert "already at head" in ok("migrate", env={"EC_CONFIG": str(config)})


def test_bad_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "ecd.toml"
    config.write_text("no_such_key = 1\n")
    line = one_line_error(ecd_db("dump", "--config", str(config)), 2)
    assert "unknown keys" in line
