"""Network files for ``ecctl apply -f`` and ``ecctl export``: YAML, TOML or JSON in, YAML or JSON out.

A network spec is a mapping of sections (``queues``, ``nodes``, ``processors``, ``sockets``,
``plugs``, ``deployments``, ``flows``, see ecd/DESIGN-3.md); each section is a list of objects
with a ``name`` or a mapping ``name -> fields``. Files are parsed here, on the client: YAML with
``safe_load`` only (plus a duplicate-key check on the composed nodes), TOML with
:mod:`tomllib`, JSON with :mod:`json`.
:func:`check` verifies the shape so that a typo is reported with the file and the place, before
anything is sent; the daemon validates the fields themselves.

    >>> spec = parse("queues: [{name: q1}]", "yaml", "net.yaml")
    >>> parse(dump(spec), "yaml", "<export>") == spec
    True
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tomllib
from typing import IO, Any

import yaml

from .errors import SpecError

__all__ = ["FORMATS", "SECTIONS", "check", "dump", "format_of", "load", "parse"]

#: Top-level keys of a network spec, in dependency order (the order :func:`dump` writes them).
SECTIONS = ("queues", "nodes", "processors", "sockets", "plugs", "deployments", "flows")
#: Input formats; output is ``yaml`` or ``json``.
FORMATS = ("yaml", "toml", "json")
_EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
#: Fields whose value must be text: a YAML ``commit: 1234567`` or ``name: on`` is a mistake.
_TEXT_FIELDS = frozenset({
    "name", "type", "description", "endpoint", "gitrepo", "module", "branch", "commit", "tag",
    "requirements", "rate_limit", "processor", "function", "queue", "cron", "source", "target",
    "argument", "node",
})


# ------------------------------------------------------------------------------- reading

def format_of(path: str) -> str:
    """Format from the file name: ``.yaml``/``.yml``, ``.toml``, ``.json``; anything else is YAML."""
    return _EXTENSIONS.get(os.path.splitext(path)[1].lower(), "yaml")


def load(path: str, fmt: str | None = None, stdin: IO[bytes] | None = None) -> dict[str, Any]:
    """Read and check the network file at ``path`` (``-``: stdin, YAML unless ``fmt`` says).

    Raises :class:`SpecError` naming the file for anything wrong with it.
    """
    if path == "-":
        source = "<stdin>"
        stream = stdin if stdin is not None else sys.stdin.buffer
        raw = stream.read()
        fmt = fmt or "yaml"
    else:
        source = path
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise SpecError(source, f"cannot read: {exc.strerror or exc}") from exc
        fmt = fmt or format_of(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(source, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return parse(text, fmt, source)


def parse(text: str, fmt: str, source: str) -> dict[str, Any]:
    """Parse ``text`` as ``fmt`` (yaml, toml or json) and :func:`check` it."""
    try:
        return check(_parse(text, fmt, source), source)
    except RecursionError as exc:
        raise SpecError(source, "nested too deeply") from exc


def _parse(text: str, fmt: str, source: str) -> Any:
    if fmt == "yaml":
        try:
            _yaml_duplicates(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(source, f"invalid YAML{_yaml_where(exc)}") from exc
    elif fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(source, f"invalid TOML: {exc}") from exc
    elif fmt == "json":
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise SpecError(source, f"invalid JSON at {where}: {exc.msg}") from exc
        except _DuplicateKey as exc:
            raise SpecError(source, f"invalid JSON: duplicate key {exc.args[0]!r}") from exc
    else:
        raise SpecError(source, f"unknown format {fmt!r} (one of: {', '.join(FORMATS)})")
    return data


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _yaml_duplicates(text: str) -> None:
    """Refuse a key given twice in one mapping (``safe_load`` silently keeps the last one).

    Works on the composed node tree (no object is constructed); raises ``yaml.YAMLError``.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    stack, seen_nodes = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key_node.value)
                    if ident in keys:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key_node.value!r}", key_node.start_mark)
                    keys.add(ident)
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f": {problem}"


# ------------------------------------------------------------------------------ checking

def check(data: Any, source: str) -> dict[str, Any]:
    """The spec in ``data`` with empty sections as ``[]`` and empty map entries as ``{}``.

    Raises :class:`SpecError` for a document that is not a mapping of known sections, for
    objects without a text ``name``, for values no daemon accepts (dates, binary) and for
    numbers or booleans where text is expected.
    """
    if data is None:
        raise SpecError(source, "empty: no network spec (expected sections such as queues:, processors:)")
    if not isinstance(data, dict):
        raise SpecError(source, f"expected a mapping of sections ({', '.join(SECTIONS)}), "
                                f"got {_kind(data)}")
    bad = [key for key in data if key not in SECTIONS]
    if bad:
        hints = [f"{key!r} (did you mean '{key}s'?)" if f"{key}s" in SECTIONS else repr(key)
                 for key in bad]
        word = "key" if len(bad) == 1 else "keys"
        raise SpecError(source, f"unknown top-level {word} {', '.join(hints)}; "
                                f"expected: {', '.join(SECTIONS)}")
    spec: dict[str, Any] = {}
    for section, body in data.items():
        if body is None:
            spec[section] = []
        elif isinstance(body, list):
            spec[section] = [_check_object(item, f"{section}[{i}]", source)
                             for i, item in enumerate(body)]
        elif isinstance(body, dict):
            entries: dict[str, Any] = {}
            for name, fields in body.items():
                where = f"{section}.{name}"
                if not isinstance(name, str):
                    raise SpecError(source, f"{section}: object name {name!r} must be text; quote it")
                fields = {} if fields is None else fields
                if not isinstance(fields, dict):
                    raise SpecError(source, f"{where}: expected a mapping of fields, got {_kind(fields)}")
                if "name" in fields and fields["name"] != name:
                    raise SpecError(source, f"{where}: name {fields['name']!r} differs from its key")
                entries[name] = _check_fields(fields, where, source)
            spec[section] = entries
        else:
            raise SpecError(source, f"{section}: expected a list of objects or a mapping "
                                    f"name -> fields, got {_kind(body)}")
    return spec


def _check_object(item: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise SpecError(source, f"{where}: expected a mapping of fields, got {_kind(item)}")
    if "name" not in item:
        raise SpecError(source, f"{where}: missing 'name'")
    return _check_fields(item, where, source)


def _check_fields(fields: dict[Any, Any], where: str, source: str) -> dict[str, Any]:
    for key, value in fields.items():
        if not isinstance(key, str):
            raise SpecError(source, f"{where}: field name {key!r} must be text")
        path = f"{where}.{key}"
        _check_plain(value, path, source)
        if key in _TEXT_FIELDS and value is not None and not isinstance(value, str):
            raise SpecError(source, f"{path}: expected text, got {_kind(value)} {value!r}; quote it")
        if key == "processors" and isinstance(value, list):
            for i, member in enumerate(value):
                if not isinstance(member, str):
                    raise SpecError(source, f"{path}[{i}]: expected a processor name, got "
                                            f"{_kind(member)} {member!r}; quote it")
    return fields


def _check_plain(value: Any, path: str, source: str) -> None:
    """Only what msgpack and the daemon understand: null, bool, number, text, list, mapping."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]", source)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(source, f"{path}: key {key!r} must be text")
            _check_plain(item, f"{path}.{key}", source)
        return
    if isinstance(value, (datetime.date, datetime.time)):
        raise SpecError(source, f"{path}: a date/time value is not allowed; quote it")
    raise SpecError(source, f"{path}: {_kind(value)} values are not allowed")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# ------------------------------------------------------------------------------- writing

class _Dumper(yaml.SafeDumper):
    """``SafeDumper`` that indents list items under their key and writes multi-line text as ``|``."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(spec: dict[str, Any], fmt: str = "yaml") -> str:
    """``spec`` as YAML (block style, fields in the daemon's order) or JSON; ends with a newline.

    Sections come in :data:`SECTIONS` order; whatever :func:`parse` gets back is ``spec``.
    """
    ordered = {key: spec[key] for key in SECTIONS if key in spec}
    ordered.update((key, value) for key, value in spec.items() if key not in ordered)
    if fmt == "yaml":
        return yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         allow_unicode=True, width=100)
    if fmt == "json":
        return json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown output format {fmt!r} (yaml or json)")
