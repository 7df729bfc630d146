"""The package rules, checked by walking imports with ``ast``: protocol imports nothing of ours,
ecd and ecctl never import each other, each heavy dependency has one home module, and no product
module uses pickle, eval or exec."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "ecd", "ecctl")

#: The modules that talk to the topology database.
_DB_MODULES = {
    "ecd/schema.py", "ecd/topology.py", "ecd/history.py", "ecd/push.py", "ecd/dbcli.py",
    "ecd/migrations/env.py", "ecd/migrations/versions/0001_initial.py",
    "ecd/migrations/versions/0002_network.py", "ecd/migrations/versions/0003_dataflow.py",
    "ecd/migrations/versions/0004_access.py", "ecd/accounts.py",
}

#: Third-party module -> the only product modules allowed to import it.
HOMES = {
    "lmdb": {"ecd/wal.py"},
    "sqlalchemy": _DB_MODULES,
    "alembic": _DB_MODULES,
    "psycopg": _DB_MODULES,
    "yaml": {"ecctl/cli.py", "ecctl/spec.py"},
    "git": {"ecd/repos.py"},
    "virtualenv": {"ecd/repos.py"},
    "zmq": {"ecd/node.py", "ecd/server.py", "ecd/mesh.py", "ecd/zap.py", "ecd/keys.py", "ecctl/client.py",
            "ecctl/trust.py"},
    "argon2": {"ecd/accounts.py"},
    "psutil": {"ecd/stats.py"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = path.parent.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside its own package
                names.add(package)
            elif node.module:
                names.add(node.module)
    return {name.split(".")[0] for name in names}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package: str) -> None:
    forbidden = {"protocol": {"ecd", "ecctl"}, "ecd": {"ecctl"}, "ecctl": {"ecd"}}[package]
    for path in _modules(package):
        bad = _imports(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_heavy_dependencies_have_one_home() -> None:
    for package in PACKAGES:
        for path in _modules(package):
            rel = str(path.relative_to(ROOT))
            for dependency in _imports(path) & set(HOMES):
                assert rel in HOMES[dependency], f"{rel} imports {dependency}; only {sorted(HOMES[dependency])} may"


def test_no_pickle_eval_or_exec_in_product_code() -> None:
    for package in PACKAGES:
        for path in _modules(package):
            tree = ast.parse(path.read_text())
            assert not _imports(path) & {"pickle", "cloudpickle", "dill", "marshal"}, path
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in ("eval", "exec"), f"{path}: {node.func.id}()"
                if isinstance(node, ast.keyword) and node.arg == "shell":
                    assert not (isinstance(node.value, ast.Constant) and node.value.value is True), f"{path}: shell=True"


def test_every_module_says_its_job() -> None:
    for package in PACKAGES:
        for path in _modules(package):
            tree = ast.parse(path.read_text())
            assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no module docstring"
