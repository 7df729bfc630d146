"""Package-level checks: exported names are complete and the package imports nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import protocol
from protocol import codec, constants, errors, messages

PKG = Path(protocol.__file__).parent


def test_all_is_complete_and_importable() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    public = {n for n in dir(constants) if n.isupper() and not n.startswith("_")}
    assert public <= set(protocol.__all__)
    assert {"Ping", "Pong", "Call", "Accepted", "Get", "Result", "Pending", "Admin", "Reply",
            "Error", "Message", "encode", "decode", "pack", "unpack", "ProtocolError",
            "UnsupportedVersion"} <= set(protocol.__all__)
    assert len(protocol.__all__) == len(set(protocol.__all__))


def test_imports_only_stdlib_and_msgpack() -> None:
    allowed = {"__future__", "re", "typing", "dataclasses", "collections", "msgpack"}
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    continue
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            for name in names:
                assert name in allowed, f"{path.name} imports {name}"


def test_modules_have_docstrings() -> None:
    for mod in (protocol, codec, constants, errors, messages):
        assert mod.__doc__ and mod.__doc__.strip()


def test_messages_frozen_kw_only() -> None:
    import dataclasses
    for cls in protocol.MESSAGE_TYPES:
        params = cls.__dataclass_params__
        assert params.frozen
        assert all(f.kw_only for f in dataclasses.fields(cls))
        names = [f.name for f in dataclasses.fields(cls)]
        assert names[-2:] == ["request_id", "credentials"]
