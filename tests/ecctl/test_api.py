"""ecctl's public surface, module rules, errors, endpoints, signatures and output helpers."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import ecctl
from ecctl import output
from ecctl.client import DEFAULT_ENDPOINT, resolve_endpoints

PKG = Path(ecctl.__file__).parent


def test_exported_names_complete() -> None:
    expected = {"Client", "Function", "Socket", "AsyncResult", "Signature", "RemoteError",
                "NoDaemon", "ServerError", "CallTimeout", "EcctlError", "Workflow", "Pipeline",
                "Parallel", "Funnel", "pipeline", "parallel", "funnel", "Processor", "ProcessorBase",
                "Plug", "processor", "socket", "plug", "UnknownServerKey"}
    assert set(ecctl.__all__) == expected
    for name in expected:
        assert getattr(ecctl, name) is not None
    public = {n for n in vars(ecctl) if not n.startswith("_")}
    assert public - set(ecctl.__all__) <= {"client", "errors", "output", "cli", "annotations",
                                           "context", "objects", "spec", "workflows", "calltree", "declare",
                                           "trust", "access_client", "access_cli"}
    assert issubclass(ecctl.Socket, ecctl.Function)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_module_rules() -> None:
    files = sorted(PKG.glob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text())
        names = _imports(path)
        assert "ecd" not in names, path
        assert "pickle" not in names, path
        if path.name not in ("client.py", "trust.py"):
            assert "zmq" not in names, path
        assert ast.get_docstring(tree), f"{path} lacks a module docstring"
        calls = {n.func.id for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not calls & {"eval", "exec"}, path


def test_error_hierarchy_and_text() -> None:
    e = ecctl.NoDaemon("ipc:///x.sock")
    assert str(e) == "no daemon at ipc:///x.sock" and e.endpoint == "ipc:///x.sock"
    r = ecctl.RemoteError("ValueError", "bad", "tb", "cid")
    assert str(r) == "ValueError: bad" and (r.type, r.message, r.traceback, r.call_id) == (
        "ValueError", "bad", "tb", "cid")
    s = ecctl.ServerError(404, "unknown socket 'x'", {"socket": "x"})
    assert str(s) == "unknown socket 'x'" and s.code == 404 and s.detail == {"socket": "x"}
    t = ecctl.CallTimeout("late", "cid")
    assert isinstance(t, TimeoutError) and t.call_id == "cid"
    for exc in (e, r, s, t):
        assert isinstance(exc, ecctl.EcctlError)


def test_endpoint_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EC_ENDPOINT", raising=False)
    monkeypatch.delenv("EC_DATA_DIR", raising=False)
    assert resolve_endpoints() == [DEFAULT_ENDPOINT]
    monkeypatch.setenv("EC_DATA_DIR", "/srv/ec")
    assert resolve_endpoints() == ["ipc:///srv/ec/ecd.sock"]
    monkeypatch.setenv("EC_ENDPOINT", "tcp://a:1, tcp://b:2")
    assert resolve_endpoints() == ["tcp://a:1", "tcp://b:2"]
    assert resolve_endpoints("ipc:///x") == ["ipc:///x"]
    client = ecctl.Client()
    assert client.endpoint == "tcp://a:1" and client.endpoints == ["tcp://a:1", "tcp://b:2"]
    client.close()


def test_signature_is_frozen_partial() -> None:
    sig = ecctl.Function("x").p("a")
    assert isinstance(sig, ecctl.Signature)
    assert (sig.function, sig.name, sig.args, dict(sig.kwargs)) == ("x", "x", ("a",), {})
    assert sig == ecctl.Signature("x", ("a",), {})
    more = sig("b", k=1)
    assert more.args == ("a", "b") and more.kwargs == {"k": 1} and sig.args == ("a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sig.function = "y"  # type: ignore[misc]
    assert ecctl.Socket("s").name == "s"


def test_table_aligns_columns() -> None:
    text = output.table(["A", "Long header"], [["xxxx", 1], [None, "y\nz"]])
    lines = text.splitlines()
    assert lines[0] == "A     Long header"
    assert lines[1] == "----  -----------"
    assert lines[2] == "xxxx  1"
    assert lines[3] == "-     y z"


def test_time_and_footer() -> None:
    assert output.fmt_time(None) == "-"
    stamp = output.fmt_time(0.5)
    assert stamp.endswith(".500") and len(stamp) == len("1970-01-01 00:00:00.500")
    assert output.page_footer(1, 10, 3830) == "Page 1 of 383 of 3830 total records"
    assert output.page_footer(1, 10, 0) == "Page 1 of 1 of 0 total records"
    assert output.fmt_duration(3725) == "1h 2m 5s"
    assert output.fmt_error({"type": "E", "message": "m"}) == "E: m"


def test_to_json_sorted_and_safe() -> None:
    text = output.to_json({"b": b"hi", "a": {1: [b"\xff"]}})
    assert json.loads(text) == {"a": {"1": ["\\xff"]}, "b": "hi"}
    assert text.index('"a"') < text.index('"b"') and "\n  " in text
