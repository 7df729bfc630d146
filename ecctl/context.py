"""What every ecctl command shares: the options object on the click context, ``--json``, printing.

The top group (:mod:`ecctl.cli`) builds one :class:`State`; commands get it through
:func:`state_of` and talk to the daemon only through ``state.client``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from . import output
from .client import Client

__all__ = ["DEFAULT_TIMEOUT", "State", "json_option", "json_param", "show", "state_of"]

#: Seconds one request may take unless ``--timeout`` / ``EC_TIMEOUT`` / the config file say.
DEFAULT_TIMEOUT = 10.0

_JSON_HELP = "Print the daemon's data as JSON."


@dataclass
class State:
    """Options shared by every command (the click context object)."""

    endpoint: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False
    server_key: str | None = None
    insecure: bool | None = None
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        """The Client, created on first use."""
        if self._client is None:
            self._client = Client(self.endpoint, timeout=self.timeout, server_key=self.server_key,
                                  insecure=self.insecure)
        return self._client

    def close(self) -> None:
        """Close the client if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


def state_of(ctx: click.Context, json_flag: bool = False) -> State:
    """The shared :class:`State`; a command's own ``--json`` switches JSON output on."""
    state = ctx.ensure_object(State)
    if json_flag:
        state.json = True
    return state


#: ``--json`` as a decorator, for commands written with ``@click.command``.
json_option = click.option("--json", "json_flag", is_flag=True, help=_JSON_HELP)


def json_param() -> click.Option:
    """``--json`` as a parameter object, for commands built programmatically."""
    return click.Option(["--json", "json_flag"], is_flag=True, help=_JSON_HELP)


def show(state: State, obj: Any, line: str) -> None:
    """Print ``obj`` as JSON with ``--json``, else the one-line summary ``line``."""
    click.echo(output.to_json(obj) if state.json else line)
