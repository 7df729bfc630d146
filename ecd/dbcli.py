"""``ecd db``: create, upgrade, inspect and drop the topology database.

::

    ecd db init     [--db URL]          create the schema (or upgrade it); print the revision
    ecd db migrate  [--db URL]          upgrade to the newest revision ("already at head" if there)
    ecd db dump     [--db URL]          print the network, nodes and counts as JSON
    ecd db drop --yes [--db URL]        drop ElasticCode's tables (refuses without --yes)

``--db`` defaults to the database ``ecd run`` would use with the same ``--config``/``--data-dir``
and environment (``EC_DB``; else ``sqlite:///<data-dir>/topology.db``). Exit codes: 0 on
success, 2 for bad usage or configuration, 1 when the database cannot be reached or refuses.
The database modules are imported inside the commands, so ``ecd --help`` stays quick.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .config import load_config
from .errors import ConfigError, EcdError, StoreUnavailable

if TYPE_CHECKING:
    import sqlalchemy as sa

    from .topology import TopologyStore

__all__ = ["db"]

F = TypeVar("F", bound=Callable[..., Any])

#: Milliseconds ``drop`` waits for a table lock held by someone else (PostgreSQL).
DROP_LOCK_TIMEOUT_MS = 10_000
#: The table Alembic keeps the schema revision in.
ALEMBIC_TABLE = "alembic_version"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ecd db: {message}", err=True)
    sys.exit(code)


def _db_options(fn: F) -> F:
    """``--db``, ``--config``, ``--data-dir``: which database to work on."""

    @click.option("--db", "url", metavar="URL", help="Database URL. [the daemon's: EC_DB, else sqlite:///<data-dir>/topology.db]")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="EC_CONFIG",
                  help="The daemon's TOML config file (its db and data_dir are used).")
    @click.option("--data-dir", type=click.Path(file_okay=False), help="The daemon's state directory. [/var/lib/ec]")
    @functools.wraps(fn)
    def wrapper(url: str | None, config_file: str | None, data_dir: str | None, **kwargs: Any) -> Any:
        # The stores log what they raise; the command reports it once, on one line.
        logging.basicConfig(level=logging.ERROR, format="ecd db: %(name)s: %(message)s", stream=sys.stderr)
        try:
            resolved = load_config({"db": url, "data_dir": data_dir}, config_file).db
        except ConfigError as exc:
            _fail(exc.message, 2)
        try:
            return fn(resolved, **kwargs)
        except EcdError as exc:
            _fail(exc.message)
        except Exception as exc:  # driver/alembic errors the stores do not map: one line, no traceback
            if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "alembic", "psycopg", "sqlite3"):
                raise
            lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            detail = lines[0] if lines else type(exc).__name__
            if type(exc).__name__ in ("OperationalError", "InterfaceError", "TimeoutError"):
                _fail(f"topology store unavailable: {detail}")
            _fail(f"{type(exc).__name__}: {detail}")

    return wrapper  # type: ignore[return-value]


def _store(url: str, *, create_dir: bool = False) -> TopologyStore:
    from .topology import TopologyStore

    if create_dir:
        _make_sqlite_dir(url)
    return TopologyStore(url)


def _make_sqlite_dir(url: str) -> None:
    """``init``/``migrate`` on a SQLite file in a directory not made yet (a fresh data dir)."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return  # the store reports the bad URL
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        directory = Path(parsed.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"topology store unavailable: cannot create {directory}: {exc.strerror}") from exc


def _revision(engine: sa.Engine) -> str | None:
    """The schema revision stamped in the database (None: not managed by the migrations yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@click.group()
def db() -> None:
    """Create, upgrade, inspect or drop the topology database."""


@db.command()
@_db_options
def init(url: str) -> None:
    """Create the schema (or upgrade it to the newest revision) and print the revision."""
    store = _store(url, create_dir=True)
    try:
        revision = store.ensure_schema()
        click.echo(f"{store.url}: at revision {revision}")
    finally:
        store.engine.dispose()


@db.command()
@_db_options
def migrate(url: str) -> None:
    """Upgrade the schema to the newest revision."""
    store = _store(url, create_dir=True)
    try:
        before = _revision(store.engine)
        head = store.ensure_schema()
        if before == head:
            click.echo(f"{store.url}: already at head {head}")
        else:
            click.echo(f"{store.url}: upgraded from {before or 'no revision'} to {head}")
    finally:
        store.engine.dispose()


@db.command()
@_db_options
@click.option("--yes", is_flag=True, help="Really drop every table (calls, history, topology).")
def drop(url: str, yes: bool) -> None:
    """Drop ElasticCode's tables, alembic_version included (needs --yes)."""
    if not yes:
        _fail("refusing to drop every table without --yes", 2)
    import sqlalchemy as sa

    from .schema import Base

    store = _store(url)
    try:
        ours = set(Base.metadata.tables) | {ALEMBIC_TABLE}
        with store.engine.begin() as conn:
            if store.dialect == "postgresql":  # a node holding a lock: fail, do not hang
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS}ms'"))
            present = set(sa.inspect(conn).get_table_names())
            tables = sa.MetaData()
            tables.reflect(conn, only=sorted(present & ours))
            tables.drop_all(conn)
        dropped = sorted(present & ours)
        others = sorted(present - ours)
        click.echo(f"{store.url}: dropped {len(dropped)} table(s)" + (f": {', '.join(dropped)}" if dropped else ""))
        if others:
            click.echo(f"left alone (not ElasticCode's): {', '.join(others)}")
    finally:
        store.engine.dispose()


@db.command()
@_db_options
def dump(url: str) -> None:
    """Print the schema revision, topology version, network (as `ecctl apply` takes it), nodes
    and the number of calls in the history, as JSON."""
    from .history import HistoryStore

    store = _store(url)
    try:
        revision = _revision(store.engine)
        if revision is None:
            _fail(f"{store.url}: no schema revision (run `ecd db init`)")
        out = {
            "revision": revision,
            "version": store.version(),
            "network": store.export(),
            "nodes": store.list("node"),
            "history": {"calls": HistoryStore(store.engine).page(1, 1)["total"]},
        }
    finally:
        store.engine.dispose()
    click.echo(json.dumps(out, indent=2, default=str))
