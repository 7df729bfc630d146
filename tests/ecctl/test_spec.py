"""ecctl.spec: network files in YAML, TOML and JSON, their checks, and the export round trip."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ecctl import spec
from ecctl.errors import EcctlError, SpecError

NETWORK_YAML = """\
queues:
  - name: q1
    type: direct
nodes:
  - {name: n1, endpoint: "tcp://10.0.0.1:7700", cpus: 8}
processors:
  - name: p1
    gitrepo: https://example.com/r.git
    module: pkg.tasks
    concurrency: 2
    commit: "0123456"
sockets:
  - {name: s1, processor: p1, function: f, queue: q1}
  - {name: s2, processor: p1, function: g, queue: q1, interval: 5}
plugs:
  - {name: pl1, source: s1, target: s2, argument: one, type: RESULT, queue: q1}
deployments:
  - {name: d1, processor: p1, node: n1, cpus: 2}
flows:
  - {name: f1, processors: [p1], description: the flow}
"""

NETWORK_TOML = """\
[[queues]]
name = "q1"
type = "direct"

[[nodes]]
name = "n1"
endpoint = "tcp://10.0.0.1:7700"
cpus = 8

[[processors]]
name = "p1"
gitrepo = "https://example.com/r.git"
module = "pkg.tasks"
concurrency = 2
commit = "0123456"

[[sockets]]
name = "s1"
processor = "p1"
function = "f"
queue = "q1"

[[sockets]]
name = "s2"
processor = "p1"
function = "g"
queue = "q1"
interval = 5

[[plugs]]
name = "pl1"
source = "s1"
target = "s2"
argument = "one"
type = "RESULT"
queue = "q1"

[[deployments]]
name = "d1"
processor = "p1"
node = "n1"
cpus = 2

[[flows]]
name = "f1"
processors = ["p1"]
description = "the flow"
"""


def expected() -> dict:
    return {
        "queues": [{"name": "q1", "type": "direct"}],
        "nodes": [{"name": "n1", "endpoint": "tcp://10.0.0.1:7700", "cpus": 8}],
        "processors": [{"name": "p1", "gitrepo": "https://example.com/r.git", "module": "pkg.tasks",
                        "concurrency": 2, "commit": "0123456"}],
        "sockets": [{"name": "s1", "processor": "p1", "function": "f", "queue": "q1"},
                    {"name": "s2", "processor": "p1", "function": "g", "queue": "q1", "interval": 5}],
        "plugs": [{"name": "pl1", "source": "s1", "target": "s2", "argument": "one", "type": "RESULT",
                   "queue": "q1"}],
        "deployments": [{"name": "d1", "processor": "p1", "node": "n1", "cpus": 2}],
        "flows": [{"name": "f1", "processors": ["p1"], "description": "the flow"}],
    }


# ----------------------------------------------------------------------------- reading

def test_three_formats_read_the_same(tmp_path: Path) -> None:
    files = {"net.yaml": NETWORK_YAML, "net.yml": NETWORK_YAML, "net.toml": NETWORK_TOML,
             "net.json": json.dumps(expected(), indent=1)}
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        assert spec.load(str(path)) == expected(), name


def test_stdin_is_yaml_and_format_override(tmp_path: Path) -> None:
    assert spec.load("-", stdin=io.BytesIO(NETWORK_YAML.encode())) == expected()
    assert spec.load("-", "toml", stdin=io.BytesIO(NETWORK_TOML.encode())) == expected()
    odd = tmp_path / "network.conf"          # unknown extension: YAML
    odd.write_text(NETWORK_YAML)
    assert spec.load(str(odd)) == expected()
    toml_named_txt = tmp_path / "network.txt"
    toml_named_txt.write_text(NETWORK_TOML)
    assert spec.load(str(toml_named_txt), "toml") == expected()
    assert spec.format_of("A.YML") == "yaml" and spec.format_of("x.JSON") == "json"


def test_map_form_and_empty_entries() -> None:
    text = "queues:\n  q1:\n  q2: {type: fanout}\nflows:\n"
    assert spec.parse(text, "yaml", "net.yaml") == {"queues": {"q1": {}, "q2": {"type": "fanout"}},
                                                    "flows": []}
    toml = '[queues.q1]\ntype = "topic"\n'
    assert spec.parse(toml, "toml", "net.toml") == {"queues": {"q1": {"type": "topic"}}}


def test_yaml_bom_and_anchors(tmp_path: Path) -> None:
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfqueues: [{name: q1}]\n")
    assert spec.load(str(bom)) == {"queues": [{"name": "q1"}]}
    text = "processors:\n  - &p {name: p1, gitrepo: g, module: m}\n  - {<<: *p, name: p2}\n"
    procs = spec.parse(text, "yaml", "a.yaml")["processors"]
    assert [p["name"] for p in procs] == ["p1", "p2"] and procs[1]["module"] == "m"


@pytest.mark.parametrize(("fmt", "text", "message"), [
    ("yaml", "queue:\n  - name: q1\n", "net.x: unknown top-level key 'queue' (did you mean 'queues'?); "
                                       "expected: queues, nodes, processors, sockets, plugs, deployments, flows"),
    ("yaml", "queues: []\nwidgets: []\nextra: 1\n", "unknown top-level keys 'widgets', 'extra'"),
    ("toml", "[[widgets]]\nname = 'w'\n", "unknown top-level key 'widgets'"),
    ("json", '{"Queues": []}', "unknown top-level key 'Queues'"),
    ("yaml", "queues: [name: q1\n", "net.x: invalid YAML at line 2, column 1"),
    ("yaml", "queues:\n  - name: q1\n\tbad: tab\n", "invalid YAML at line 3"),
    ("yaml", "queues: []\nqueues: []\n", "invalid YAML at line 2, column 1: found duplicate key 'queues'"),
    ("yaml", "queues:\n  - {name: q1, type: direct, type: topic}\n", "found duplicate key 'type'"),
    ("yaml", "--- {queues: []}\n--- {queues: []}\n", "invalid YAML"),
    ("json", '{"queues": [}', "invalid JSON at line 1, column 13"),
    ("json", '{"queues": [], "queues": []}', "invalid JSON: duplicate key 'queues'"),
    ("toml", "queues = [\n", "invalid TOML"),
    ("yaml", "", "net.x: empty: no network spec"),
    ("yaml", "# only a comment\n", "empty: no network spec"),
    ("yaml", "- queues\n", "expected a mapping of sections (queues, nodes, processors, sockets, plugs, "
                           "deployments, flows), got a list"),
    ("yaml", "queues: q1\n", "queues: expected a list of objects or a mapping name -> fields, got text"),
    ("yaml", "queues: [q1]\n", "queues[0]: expected a mapping of fields, got text"),
    ("yaml", "queues: [{type: direct}]\n", "queues[0]: missing 'name'"),
    ("yaml", "queues: {q1: 3}\n", "queues.q1: expected a mapping of fields, got a number"),
    ("yaml", "queues: {q1: {name: q2}}\n", "queues.q1: name 'q2' differs from its key"),
    ("yaml", "queues: {1: {}}\n", "queues: object name 1 must be text; quote it"),
    ("yaml", "processors: [{name: p1, commit: 1234567}]\n",
     "processors[0].commit: expected text, got a number 1234567; quote it"),
    ("yaml", "queues: [{name: on}]\n", "queues[0].name: expected text, got a boolean True; quote it"),
    ("yaml", "flows: [{name: f, processors: [p1, 2]}]\n", "flows[0].processors[1]: expected a processor name"),
    ("yaml", "processors: [{name: p, description: 2024-01-02}]\n",
     "processors[0].description: a date/time value is not allowed; quote it"),
    ("yaml", "queues: [{name: q, 3: x}]\n", "queues[0]: field name 3 must be text"),
    ("yaml", "queues: [{name: q, x: !!binary aGk=}]\n", "queues[0].x: bytes values are not allowed"),
    ("toml", "[[processors]]\nname = 'p'\nwhen = 1979-05-27\n", "processors[0].when: a date/time value"),
])
def test_bad_files_name_the_file_and_the_place(fmt: str, text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.parse(text, fmt, "net.x")
    assert message in str(info.value)
    assert str(info.value).startswith("net.x: ")
    assert isinstance(info.value, EcctlError) and info.value.source == "net.x"


def test_unsafe_yaml_tags_are_refused() -> None:
    with pytest.raises(SpecError, match="invalid YAML"):
        spec.parse("queues: !!python/object/apply:os.system ['true']\n", "yaml", "evil.yaml")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing\.yaml: cannot read: No such file or directory"):
        spec.load(str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError, match="cannot read"):
        spec.load(str(tmp_path))                                   # a directory
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("queues: [{name: q, description: caf\xe9}]\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin\.yaml: not UTF-8 text"):
        spec.load(str(latin))
    with pytest.raises(SpecError, match="unknown format 'xml'"):
        spec.parse("<a/>", "xml", "net.xml")


# ----------------------------------------------------------------------------- writing

def exported() -> dict:
    """What the daemon's ``export`` may give: awkward values included."""
    return {
        "flows": [{"name": "f1", "description": None, "processors": []}],
        "queues": [{"name": "q1", "type": "direct", "durable": True, "max_length": None,
                    "message_ttl": 60, "description": "a: colon, # hash"}],
        "nodes": [{"name": "n1", "endpoint": "tcp://10.0.0.1:7700", "cpus": 8, "description": None}],
        "processors": [{"name": "p1", "gitrepo": "https://example.com/r.git", "module": "pkg.tasks",
                        "branch": "yes", "commit": "0123456", "tag": None,
                        "requirements": "requests==2.31\nsix\n", "concurrency": 2, "retries": 0,
                        "retry_delay": 1.0, "timelimit": 2.5, "rate_limit": "10/s",
                        "description": "héllo ✓", "enabled": False, "paused": False}],
        "sockets": [{"name": "s1", "processor": "p1", "function": "f", "queue": "q1",
                     "interval": None, "cron": "*/5 * * * *", "description": ""}],
        "plugs": [{"name": "pl1", "source": "s1", "target": "s1", "argument": None, "type": "ERROR",
                   "queue": "q1", "description": "null"}],
        "deployments": [{"name": "d1", "processor": "p1", "node": "n1", "cpus": None}],
    }


def test_yaml_dump_round_trips_and_reads_well() -> None:
    text = spec.dump(exported())
    assert spec.parse(text, "yaml", "<export>") == exported()
    lines = text.splitlines()
    # sections in dependency order, block style, list items indented under their key
    assert [line for line in lines if not line.startswith(" ")] == [f"{s}:" for s in spec.SECTIONS]
    assert "  - name: q1" in lines and "{" not in text
    assert "    requirements: |" in lines and "      requests==2.31" in lines
    assert "    commit: '0123456'" in lines and "    branch: 'yes'" in lines
    assert "    description: héllo ✓" in lines
    assert "    processors: []" in lines


def test_json_dump_round_trips() -> None:
    text = spec.dump(exported(), "json")
    assert text.endswith("}\n")
    assert list(json.loads(text)) == list(spec.SECTIONS)
    assert spec.parse(text, "json", "<export>") == exported()
    with pytest.raises(ValueError):
        spec.dump(exported(), "toml")


def test_dump_of_map_form() -> None:
    data = {"queues": {"q1": {"type": "fanout"}}, "processors": []}
    assert spec.parse(spec.dump(data), "yaml", "x") == data


@pytest.mark.parametrize(("fmt", "text"), [
    ("json", '{"queues": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("yaml", "queues: " + "[" * 5_000 + "]" * 5_000),
])
def test_absurd_nesting_is_a_spec_error(fmt: str, text: str) -> None:
    with pytest.raises(SpecError, match="deep.json: nested too deeply"):
        spec.parse(text, fmt, "deep.json")
