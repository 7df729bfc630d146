"""The ``ecd`` command: ``ecd run`` starts a node in the foreground (systemd runs it this way);
``ecd db init|migrate|drop|dump`` manages the topology database (see :mod:`ecd.dbcli`).

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


def main() -> None:
    cli(prog_name="ecd")


if __name__ == "__main__":
    main()
