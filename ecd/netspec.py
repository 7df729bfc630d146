"""The network as data: the kinds, their fields and checks, and whole-network specs.

Kinds (in dependency order) and their fields are :data:`KINDS`, :data:`FIELDS` and :data:`REFS`;
:func:`check_fields` validates what a user gives for one object (the store calls it on every add
and update). Pure logic: no database access of its own, no SQLAlchemy.

A spec is a dict of sections (``queues``, ``nodes``, ``processors``, ``sockets``, ``plugs``,
``deployments``, ``flows``); each section is a list of objects with a ``name`` or a map
name -> fields. ecctl parses YAML/TOML/JSON into that dict; this module only sees dicts.

* :func:`parse` checks the shape (sections, names listed once) and returns a plan
  ``{kind: {name: fields}}`` in dependency order.
* :func:`run` makes the database match the plan through the store's writer, inside the one
  transaction the store opened: adds and updates in dependency order, then (``prune``) deletes
  of the unnamed objects of the listed sections in reverse order (never nodes). Fields not
  given take the defaults on add and are left alone on update, so applying the same spec twice
  changes nothing the second time.
* :func:`export` turns stored objects into a spec that applies back to no changes (without
  ``id``/``created``/``updated``/``last_seen``/``restarts``/``version``).
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable
from typing import Any, Protocol

from croniter import croniter

from ecd.errors import InvalidName
from protocol import CURVE_KEY_RE

__all__ = [
    "FIELDS",
    "KINDS",
    "NOT_EXPORTED",
    "PLUG_TYPES",
    "QUEUE_TYPES",
    "REFS",
    "SECTIONS",
    "check_exclusive",
    "check_fields",
    "check_int",
    "check_key",
    "check_kind",
    "check_name",
    "check_token",
    "export",
    "parse",
    "run",
]

#: The kinds of objects, in dependency order (a kind only references kinds before it).
KINDS = ("queue", "node", "processor", "socket", "plug", "deployment", "flow")
#: Allowed queue types.
QUEUE_TYPES = ("direct", "topic", "fanout")
#: What a scheduled socket does about the ticks it missed while no node ran it: fire ``once``
#: for all of them, or once for ``all`` of them.
CATCH_UP = ("once", "all")
#: Allowed plug types: what of the source call feeds the target.
PLUG_TYPES = ("RESULT", "ERROR")
#: Upper bounds of numeric fields.
MAX_CONCURRENCY = 1024
MAX_RETRIES = 1_000_000
MAX_CPUS = 65536
MAX_INT32 = 2**31 - 1
MAX_SECONDS = 10.0 * 365 * 86400
#: Longest description, in characters.
MAX_DESCRIPTION = 10_000

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{4,64}", re.ASCII)
_RATE_RE = re.compile(r"[1-9][0-9]{0,8}/[smh]", re.ASCII)
_CRON_FIELD_RE = re.compile(r"[0-9A-Za-z*/,?#-]{1,20}", re.ASCII)


def check_key(value: Any, what: str = "key", empty: bool = True) -> str:
    """A CURVE public key in Z85 (40 characters), as ``ecd keys show`` prints it ("" for none)."""
    if value == "" and empty:
        return value
    if not isinstance(value, str) or not CURVE_KEY_RE.fullmatch(value):
        raise InvalidName(f"invalid {what} {str(value)[:60]!r}: expected the 40-character Z85 key `ecd keys show` prints")
    return value


# --------------------------------------------------------------------------- field checks


def check_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1..200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_module(value: Any) -> str:
    parts = value.split(".") if isinstance(value, str) else []
    if (
        not parts
        or len(value) > 200
        or not all(_IDENT_RE.fullmatch(p) and not keyword.iskeyword(p) for p in parts)
    ):
        raise InvalidName(f"invalid module {value!r}: expected a dotted python path like 'pkg.mod'")
    return value


def _check_ident(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > 200 or not _IDENT_RE.fullmatch(value) or keyword.iskeyword(value):
        raise InvalidName(f"invalid {what} {value!r}: expected a python identifier")
    return value


def check_token(value: Any, what: str, max_len: int, optional: bool = False, empty: bool = False) -> str | None:
    """A string without whitespace or control characters, not starting with '-'."""
    if value is None and optional:
        return None
    if (
        not isinstance(value, str)
        or not (0 if empty else 1) <= len(value) <= max_len
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        low = 0 if empty else 1
        raise InvalidName(f"invalid {what} {value!r}: {low}..{max_len} characters, no whitespace or control characters")
    if value.startswith("-"):
        raise InvalidName(f"invalid {what} {value!r}: must not start with '-'")
    return value


def _check_text(value: Any, what: str, max_len: int = 100_000) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
        raise InvalidName(f"invalid {what}: expected text of at most {max_len} characters")
    return value


def check_int(value: Any, what: str, lo: int, hi: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidName(f"invalid {what} {value!r}: expected an integer in {lo}..{hi}")
    return value


def _check_float(value: Any, what: str, lo: float, positive: bool = False, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < lo
        or (positive and value <= 0)
        or value > MAX_SECONDS
    ):
        rel = "> 0" if positive else f">= {lo}"
        raise InvalidName(f"invalid {what} {value!r}: expected a number {rel} and <= {MAX_SECONDS:.0f}")
    return float(value)


#: Shortest interval of a scheduled socket, in seconds.
MIN_INTERVAL = 0.1


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidName(f"invalid {what} {value!r}: expected true or false")
    return value


def _check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidName(f"invalid {what} {value!r}: expected one of {', '.join(choices)}")
    return value


def _check_pattern(value: Any, what: str, pattern: re.Pattern[str], expected: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidName(f"invalid {what} {value!r}: expected {expected}")
    return value


def _check_cron(value: Any) -> str | None:
    """A cron expression croniter can read: 5 fields (minute hour day month weekday), or 6 with
    seconds last (``*/5 * * * * */10``: every 10 seconds of every 5th minute)."""
    if value is None:
        return None
    fields = value.split() if isinstance(value, str) and len(value) <= 100 else []
    if not 5 <= len(fields) <= 6 or not all(_CRON_FIELD_RE.fullmatch(f) for f in fields) \
            or not croniter.is_valid(" ".join(fields)):
        raise InvalidName(f"invalid cron {value!r}: expected 5 cron fields (minute hour day month weekday), "
                          "or 6 with seconds last")
    return " ".join(fields)


def _check_names(value: Any, what: str) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise InvalidName(f"invalid {what} {value!r}: expected a list of names")
    return sorted({check_name(v, what.rstrip("s") + " name") for v in value})


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise InvalidName(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


#: Marks a field that must be given on add.
_REQUIRED = object()


def _description(value: Any) -> str | None:
    return _check_text(value, "description", MAX_DESCRIPTION)


def _ref(kind: str) -> Callable[[Any], str]:
    return lambda v: check_name(v, f"{kind} name")


#: kind -> field -> (check, default on add; ``_REQUIRED`` when the field must be given).
FIELDS: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "queue": {
        "type": (lambda v: _check_choice(v, "queue type", QUEUE_TYPES), "direct"),
        "durable": (lambda v: _check_bool(v, "durable"), True),
        "max_length": (lambda v: check_int(v, "max_length", 1, MAX_INT32, optional=True), None),
        "message_ttl": (lambda v: check_int(v, "message_ttl", 1, MAX_INT32, optional=True), None),
        "description": (_description, None),
    },
    "node": {
        "endpoint": (lambda v: check_token(v, "endpoint", 500, empty=True), ""),
        "cpus": (lambda v: check_int(v, "cpus", 1, MAX_CPUS), 1),
        "version": (lambda v: check_token(v, "version", 100, empty=True), ""),
        "description": (_description, None),
        "key": (check_key, ""),
    },
    "processor": {
        "gitrepo": (lambda v: check_token(v, "gitrepo", 2000), _REQUIRED),
        "module": (_check_module, _REQUIRED),
        "branch": (lambda v: check_token(v, "branch", 255, optional=True), None),
        "commit": (lambda v: _check_pattern(v, "commit", _COMMIT_RE, "4..64 hex digits"), None),
        "tag": (lambda v: check_token(v, "tag", 255, optional=True), None),
        "requirements": (lambda v: _check_text(v, "requirements"), None),
        "concurrency": (lambda v: check_int(v, "concurrency", 1, MAX_CONCURRENCY), 1),
        "retries": (lambda v: check_int(v, "retries", 0, MAX_RETRIES), 0),
        "retry_delay": (lambda v: _check_float(v, "retry_delay", 0.0), 1.0),
        "timelimit": (lambda v: _check_float(v, "timelimit", 0.0, positive=True, optional=True), None),
        "rate_limit": (lambda v: _check_pattern(v, "rate_limit", _RATE_RE, "'N/s', 'N/m' or 'N/h'"), None),
        "description": (_description, None),
        "enabled": (lambda v: _check_bool(v, "enabled"), True),
        "paused": (lambda v: _check_bool(v, "paused"), False),
        "restarts": (lambda v: check_int(v, "restarts", 0, MAX_INT32), 0),
    },
    "socket": {
        "processor": (_ref("processor"), _REQUIRED),
        "function": (lambda v: _check_ident(v, "function"), _REQUIRED),
        "queue": (_ref("queue"), _REQUIRED),
        "interval": (lambda v: _check_float(v, "interval", MIN_INTERVAL, optional=True), None),
        "cron": (_check_cron, None),
        "description": (_description, None),
        "catch_up": (lambda v: _check_choice(v, "catch_up", CATCH_UP), "once"),
    },
    "plug": {
        "source": (_ref("socket"), _REQUIRED),
        "target": (_ref("socket"), _REQUIRED),
        "argument": (lambda v: _check_ident(v, "argument", optional=True), None),
        "type": (lambda v: _check_choice(v, "plug type", PLUG_TYPES), "RESULT"),
        "queue": (_ref("queue"), _REQUIRED),
        "description": (_description, None),
    },
    "deployment": {
        "processor": (_ref("processor"), _REQUIRED),
        "node": (_ref("node"), _REQUIRED),
        "cpus": (lambda v: check_int(v, "cpus", 1, MAX_CPUS, optional=True), None),
    },
    "flow": {
        "description": (_description, None),
        "processors": (lambda v: _check_names(v, "processors"), ()),
    },
}

#: kind -> reference field -> referenced kind (the store keeps ``<field>_id``).
REFS: dict[str, dict[str, str]] = {
    "queue": {},
    "node": {},
    "processor": {},
    "socket": {"processor": "processor", "queue": "queue"},
    "plug": {"source": "socket", "target": "socket", "queue": "queue"},
    "deployment": {"processor": "processor", "node": "node"},
    "flow": {},
}


def check_fields(kind: str, fields: dict[str, Any], *, add: bool) -> dict[str, Any]:
    """Validated values of ``fields`` of a ``kind``; on add, with the defaults of the fields not given."""
    rules = FIELDS[kind]
    unknown = sorted(str(key) for key in set(fields) - set(rules))
    if unknown:
        raise InvalidName(f"unknown {kind} field(s): {', '.join(unknown)}")
    if add:
        missing = [key for key, (_, default) in rules.items() if default is _REQUIRED and key not in fields]
        if missing:
            raise InvalidName(f"missing {kind} field(s): {', '.join(missing)}")
        fields = {key: fields.get(key, default) for key, (_, default) in rules.items()}
    return {key: rules[key][0](value) for key, value in fields.items()}


def check_exclusive(kind: str, name: str, values: dict[str, Any]) -> None:
    """A processor names a commit or a tag, not both; a socket an interval or a cron, not both."""
    if kind == "processor" and values.get("commit") is not None and values.get("tag") is not None:
        raise InvalidName(f"processor {name!r}: commit and tag are mutually exclusive (give one, or neither)")
    if kind == "socket" and values.get("interval") is not None and values.get("cron") is not None:
        raise InvalidName(f"socket {name!r}: interval and cron are mutually exclusive (give one, or neither)")


# --------------------------------------------------------------------------- specs


#: Spec section -> kind, in dependency order (a kind only references kinds before it).
SECTIONS = {
    "queues": "queue",
    "nodes": "node",
    "processors": "processor",
    "sockets": "socket",
    "plugs": "plug",
    "deployments": "deployment",
    "flows": "flow",
}
#: Stored fields that are not part of a spec (kept by the database or the daemons).
NOT_EXPORTED = frozenset({"id", "created", "updated", "last_seen", "restarts", "version"})


class Writer(Protocol):
    """What :func:`run` needs from the store, inside its transaction."""

    def list(self, kind: str) -> list[dict[str, Any]]: ...
    def add(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]: ...
    def update(self, kind: str, name: str, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]: ...
    def delete(self, kind: str, name: str) -> dict[str, Any]: ...


def parse(spec: Any) -> dict[str, dict[Any, dict[str, Any]]]:
    """The plan ``{kind: {name: fields}}`` of ``spec`` (sections left out stay out)."""
    if not isinstance(spec, dict):
        raise InvalidName("invalid spec: expected a map of sections (queues, nodes, processors, ...)")
    unknown = sorted(str(key) for key in spec if key not in SECTIONS)
    if unknown:
        raise InvalidName(f"unknown spec section(s): {', '.join(unknown)}; expected {', '.join(SECTIONS)}")
    plan: dict[str, dict[Any, dict[str, Any]]] = {}
    for section, kind in SECTIONS.items():
        if section not in spec:
            continue
        entries = spec[section]
        if entries is None:
            entries = []
        if isinstance(entries, dict):
            items = []
            for name, fields in entries.items():
                fields = {} if fields is None else fields
                if not isinstance(fields, dict):
                    raise InvalidName(f"invalid {section} entry {name!r}: expected a map of fields")
                if "name" in fields and fields["name"] != name:
                    raise InvalidName(f"invalid {section} entry {name!r}: its name field says {fields['name']!r}")
                items.append((name, fields))
        elif isinstance(entries, list):
            items = []
            for entry in entries:
                if not isinstance(entry, dict) or "name" not in entry:
                    raise InvalidName(f"invalid {section} entry {entry!r}: expected a map with a name")
                items.append((entry["name"], entry))
        else:
            raise InvalidName(f"invalid section {section}: expected a list or a map")
        objects: dict[Any, dict[str, Any]] = {}
        for name, fields in items:
            if not isinstance(name, str):
                raise InvalidName(f"invalid {kind} name {name!r}: expected a string")
            if name in objects:
                raise InvalidName(f"{kind} {name!r} is listed twice in {section}")
            objects[name] = {key: value for key, value in fields.items() if key != "name"}
        plan[kind] = objects
    return plan


def run(writer: Writer, plan: dict[str, dict[Any, dict[str, Any]]], *, prune: bool = False) -> list[dict[str, Any]]:
    """Apply ``plan`` through ``writer``; returns the changes made, in order."""
    changes: list[dict[str, Any]] = []
    for kind in SECTIONS.values():
        if kind not in plan:
            continue
        existing = {row["name"] for row in writer.list(kind)}
        for name, fields in plan[kind].items():
            if name in existing:
                _, diff = writer.update(kind, name, fields)
                if diff:
                    changes.append({"action": "update", "kind": kind, "name": name, "fields": diff})
            else:
                row = writer.add(kind, {"name": name, **fields})
                changes.append({"action": "add", "kind": kind, "name": name,
                                "fields": {key: [None, value] for key, value in _spec_fields(row).items()}})
    if prune:
        for kind in reversed(SECTIONS.values()):
            if kind not in plan or kind == "node":
                continue
            for row in writer.list(kind):
                if row["name"] not in plan[kind]:
                    writer.delete(kind, row["name"])
                    changes.append({"action": "delete", "kind": kind, "name": row["name"],
                                    "fields": {key: [value, None] for key, value in _spec_fields(row).items()}})
    return changes


def export(objects: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """A spec of ``objects`` (``{kind: [stored dict]}``): every section, entries sorted by name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for section, kind in SECTIONS.items():
        rows = sorted(objects.get(kind, []), key=lambda row: row["name"])
        out[section] = [{"name": row["name"], **_spec_fields(row)} for row in rows]
    return out


def _spec_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a stored object that belong in a spec (lists copied)."""
    return {
        key: list(value) if isinstance(value, (list, tuple)) else value
        for key, value in row.items()
        if key not in NOT_EXPORTED and key != "name"
    }
