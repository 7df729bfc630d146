"""The ``ecd`` command: ``ecd run`` starts a node in the foreground (systemd runs it this way);
``ecd db init|migrate|drop|dump`` manages the topology database (see :mod:`ecd.dbcli`);
``ecd keys show|init`` prints (or makes) the node's CURVE public key.

Options override the ``--config`` TOML file and ``EC_*`` environment variables (see
:mod:`ecd.config`). Exit codes: 0 after a clean stop, 2 for bad configuration, 1 otherwise.
"""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from .config import load_config
from .dbcli import db
from .errors import ConfigError, EcdError

logger = logging.getLogger("ecd")


@click.group()
@click.version_option(__version__, prog_name="ecd")
def cli() -> None:
    """ElasticCode node daemon."""


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="EC_CONFIG",
              help="TOML config file (keys: data_dir, listen, db, name, cpus, ...).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="State directory (log, code, venvs). [/var/lib/ec]")
@click.option("--listen", multiple=True, help="Extra endpoint to serve, e.g. tcp://127.0.0.1:7800 (repeatable).")
@click.option("--db", help="Topology database URL. [sqlite:///<data-dir>/topology.db]")
@click.option("--name", help="Node name. [hostname]")
@click.option("--cpus", type=click.IntRange(min=1), help="CPU slots this node may keep busy. [all]")
@click.option("--venv-dir", type=click.Path(file_okay=False), help="Virtualenv cache. [<data-dir>/venvs]")
@click.option("--grace", type=click.FloatRange(min=0), help="Seconds running calls get on SIGTERM. [30]")
@click.option("--history/--no-history", default=None,
              help="Export call history to the topology database (ecctl ls calls). [on]")
@click.option("--history-retention", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Seconds finished calls stay in the history; 0 keeps them forever. [604800]")
@click.option("--topology-poll", type=click.FloatRange(min=0.05), metavar="SECONDS",
              help="Seconds between topology change checks (SQLite; PostgreSQL pushes). [1]")
@click.option("--join", multiple=True, metavar="ENDPOINT",
              help="A peer to join the mesh through, e.g. tcp://10.0.0.2:7800 (repeatable, or comma-separated).")
@click.option("--advertise", metavar="ENDPOINT",
              help="The tcp:// endpoint peers reach this node on. [the first tcp --listen endpoint]")
@click.option("--replicas", type=click.IntRange(min=1, max=9),
              help="Nodes that must hold a call durably before it is acknowledged. [2 with two or more live nodes]")
@click.option("--require-replicas/--no-require-replicas", default=None,
              help="Refuse calls while fewer than --replicas nodes are alive (else accept with fewer). [off]")
@click.option("--heartbeat", type=click.FloatRange(min=0.05), metavar="SECONDS",
              help="Seconds between heartbeats to peers; a peer is dead after 5 missed. [0.5]")
@click.option("--insecure/--secure", default=None,
              help="Serve tcp without CURVE and without authentication: anyone who reaches the port owns "
                   "the node. Only for a loopback address (see --insecure-bind-any). [secure]")
@click.option("--insecure-bind-any", is_flag=True, default=None,
              help="With --insecure, also allow a tcp --listen on a non-loopback address.")
@click.option("--session-ttl", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Seconds a login (ecctl login) lasts. [43200]")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run(config_file: str | None, **options: object) -> None:
    """Run a node in the foreground until SIGTERM."""
    try:
        config = load_config(options, config_file)
    except ConfigError as exc:
        click.echo(f"ecd: {exc.message}", err=True)
        sys.exit(2)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .node import Node  # imported late: the CLI stays quick for --help and bad options

    try:
        code = Node(config).run()
    except ConfigError as exc:
        logger.error("%s", exc.message)
        sys.exit(2)
    except EcdError as exc:
        logger.error("%s", exc.message)
        sys.exit(1)
    sys.exit(code)


cli.add_command(db)


def _data_dir_option(fn: object) -> object:
    return click.option("--data-dir", type=click.Path(file_okay=False), envvar="EC_DATA_DIR",
                        default="/var/lib/ec", show_default=True, help="The node's state directory.")(fn)


@cli.group()
def keys() -> None:
    """The node's CURVE key pair (made at first start under <data-dir>/keys/)."""


@keys.command("show")
@_data_dir_option
def keys_show(data_dir: str) -> None:
    """Print the node's public key (Z85), for `ecctl trust` and `ecctl add node --key`."""
    from pathlib import Path

    from .keys import load

    try:
        pair = load(Path(data_dir).expanduser().resolve())
    except ConfigError as exc:
        click.echo(f"ecd: {exc.message}", err=True)
        sys.exit(2)
    click.echo(pair.public_text)


@keys.command("init")
@_data_dir_option
def keys_init(data_dir: str) -> None:
    """Make the node's key pair now (if it has none) and print its public key: a node can be
    admitted (`ecctl add node -n NAME --key KEY`) before its first start."""
    from pathlib import Path

    from .keys import load_or_create

    try:
        path = Path(data_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        pair, created = load_or_create(path)
    except (ConfigError, OSError) as exc:
        click.echo(f"ecd: {getattr(exc, 'message', exc)}", err=True)
        sys.exit(2)
    if created:
        click.echo(f"made a new key pair in {path / 'keys'}", err=True)
    click.echo(pair.public_text)


def main() -> None:
    cli(prog_name="ecd")


if __name__ == "__main__":
    main()
