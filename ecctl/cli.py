"""The ``ecctl`` command line: one click group whose commands only call :class:`Client`.

This module holds the group, ``run``/``task run``, ``status``, ``ping``, ``apply``,
``export``, the mesh's ``node drain|undrain`` and its ``ls nodes`` table; the other object
commands (``add``, ``update``, ``delete``, ``ls``, ``proc``) are in :mod:`ecctl.objects`,
network files in :mod:`ecctl.spec`.

Options resolve as defaults -> ``--config`` TOML file -> environment -> flags. Exit codes:
0 ok, 1 the call or the request failed, 2 usage error, unreadable network file or no daemon.
Errors are one line on stderr: ``error: <message>``.
"""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from typing import Any

import click

import protocol

from . import output, spec
from .client import DEFAULT_DRAIN_TIMEOUT
from .context import DEFAULT_TIMEOUT, State, json_option, show, state_of
from .access_cli import login_cmd, logout_cmd, trust_cmd, whoami_cmd
from .errors import CallTimeout, EcctlError, NoDaemon, RemoteError, ServerError, SpecError, UnknownServerKey
from .objects import add_group, delete_cmd, ls_group, proc_group, update_group

log = logging.getLogger(__name__)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    """``error: <message>`` as exactly one line on stderr (a multi-line reason is joined)."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    click.echo(f"error: {line}", err=True)
    ctx.exit(code)


class _Group(click.Group):
    """Top group: maps client errors onto one stderr line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (NoDaemon, SpecError, UnknownServerKey) as exc:
            _fail(ctx, str(exc), 2)
        except RemoteError as exc:
            _fail(ctx, f"{exc} (call {exc.call_id})", 1)
        except (ServerError, CallTimeout, EcctlError) as exc:
            _fail(ctx, str(exc), 1)
        except protocol.ProtocolError as exc:
            _fail(ctx, exc.reason, 1)


def _load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc
    unknown = set(data) - {"endpoint", "timeout", "server_key"}
    if unknown:
        log.warning("ignoring unknown config keys: %s", ", ".join(sorted(unknown)))
    return data


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar="EC_ENDPOINT", metavar="URL[,URL...]",
              help="Daemon endpoint (ipc://... or tcp://...), or several separated by commas: "
                   "a node that does not answer is left for the next; env EC_ENDPOINT.")
@click.option("--timeout", envvar="EC_TIMEOUT", type=float, metavar="SECONDS",
              help=f"Per-request deadline (default {DEFAULT_TIMEOUT:g}); env EC_TIMEOUT.")
@click.option("--config", "config_path", envvar="EC_CONFIG", type=click.Path(dir_okay=False),
              metavar="FILE", help="TOML file with `endpoint` and `timeout` keys.")
@click.option("--server-key", envvar="EC_SERVER_KEY", metavar="KEY",
              help="The public key of the (first) node, as `ecd keys show` prints it; env EC_SERVER_KEY "
                   "(else the key `ecctl trust` stored for the endpoint).")
@click.option("--insecure", is_flag=True, envvar="EC_INSECURE", default=None,
              help="Plain tcp, for a node run with --insecure (no CURVE, no login); env EC_INSECURE=on.")
@json_option
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
@click.pass_context
def cli(ctx: click.Context, endpoint: str | None, timeout: float | None, config_path: str | None,
        server_key: str | None, insecure: bool | None, json_flag: bool, verbose: bool) -> None:
    """Drive an ElasticCode ecd daemon."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    config = _load_config(config_path)
    if timeout is None:
        timeout = float(config.get("timeout", DEFAULT_TIMEOUT))
    state = State(endpoint=endpoint or config.get("endpoint"), timeout=timeout, json=json_flag,
                  server_key=server_key or config.get("server_key"), insecure=insecure)
    ctx.obj = state
    ctx.call_on_close(state.close)


# --------------------------------------------------------------------------------- run

def _call_args(args: tuple[str, ...], data: str | None) -> list[Any]:
    if data is not None:
        if args:
            raise click.UsageError("give either ARG... or --data, not both")
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc
        if not isinstance(parsed, list):
            raise click.BadParameter("must be a JSON list of arguments", param_hint="--data")
        return parsed
    if args:
        return list(args)
    if sys.stdin is None or sys.stdin.isatty():
        return []
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"stdin is not valid UTF-8: {exc}") from exc
    return [text[:-1] if text.endswith("\n") else text]


def _print_value(value: Any) -> None:
    if isinstance(value, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return
    text = value if isinstance(value, str) else json.dumps(output.to_jsonable(value))
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run(state: State, socket: str, args: tuple[str, ...], data: str | None, no_wait: bool,
         timeout: float | None, stream: bool = False) -> None:
    call_args = _call_args(args, data)
    handle = state.client.submit(socket, call_args, stream=stream)
    if no_wait:
        click.echo(handle.id)
        return
    if stream:
        for item in state.client.stream(handle.id, timeout=timeout):
            _print_value(item)
        return
    _print_value(handle.get(timeout))


_run_options = [
    click.option("--data", metavar="JSON", help="JSON list of arguments."),
    click.option("--no-wait", is_flag=True, help="Print the call id once accepted; do not wait."),
    click.option("--timeout", "wait", type=float, metavar="S",
                 help="Seconds to wait for the result (default: forever)."),
    click.option("--stream", is_flag=True,
                 help="Print each item a generator function yields, a line each, as it comes."),
]


def _with_run_options(fn: Any) -> Any:
    for option in reversed(_run_options):
        fn = option(fn)
    return fn


@cli.command("run")
@click.argument("socket")
@click.argument("args", nargs=-1)
@_with_run_options
@click.pass_obj
def run_cmd(state: State, socket: str, args: tuple[str, ...], data: str | None, no_wait: bool,
            wait: float | None, stream: bool) -> None:
    """Call SOCKET with each ARG as one string argument and print the result.

    With no ARG and no --data, a non-TTY stdin is the one argument. With --stream, each item
    of a streaming socket (a generator) is printed as it comes.
    """
    _run(state, socket, args, data, no_wait, wait, stream)


@cli.group("task")
def task_group() -> None:
    """Tasks (seed spelling)."""


@task_group.command("run")
@click.option("-s", "--socket", required=True, help="Socket to call.")
@click.argument("args", nargs=-1)
@_with_run_options
@click.pass_obj
def task_run_cmd(state: State, socket: str, args: tuple[str, ...], data: str | None,
                 no_wait: bool, wait: float | None, stream: bool) -> None:
    """Same as `ecctl run SOCKET`."""
    _run(state, socket, args, data, no_wait, wait, stream)


# ------------------------------------------------------------------------------ status

@cli.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, json_flag: bool) -> None:
    """Node status: CPUs, busy slots, workers per processor, queue depths."""
    state = state_of(ctx, json_flag)
    s = state.client.status()
    if state.json:
        click.echo(output.to_json(s))
        return
    click.echo(f"node {s.get('node')}  version {s.get('version')}  pid {s.get('pid')}  "
               f"uptime {output.fmt_duration(s.get('uptime'))}")
    click.echo(f"cpus {s.get('cpus')}  busy {s.get('busy')}")
    if s.get("insecure"):
        click.echo("insecure: true  (plain tcp, no authentication: anyone who reaches the node owns it)")
    elif s.get("key"):
        click.echo(f"key {s.get('key')}")
    click.echo()
    click.echo(output.table(
        ["Processor", "Status", "Workers", "Busy", "Idle", "Reason"],
        [[p.get("name"), p.get("status"), p.get("workers"), p.get("busy"), p.get("idle"),
          p.get("reason")] for p in s.get("processors") or []]))
    click.echo()
    click.echo(output.table(["Queue", "Depth"],
                            [[q.get("name"), q.get("depth")] for q in s.get("queues") or []]))
    if s.get("sockets"):
        click.echo()
        click.echo(output.table(["Socket", "Depth"],
                                [[k.get("name"), k.get("depth")] for k in s["sockets"]]))


@cli.command("ping")
@json_option
@click.pass_context
def ping_cmd(ctx: click.Context, json_flag: bool) -> None:
    """Check that the daemon answers."""
    state = state_of(ctx, json_flag)
    pong = state.client.ping()
    show(state, pong, f"{pong['node']} {pong['version']} {pong['rtt'] * 1000:.1f} ms")


# ------------------------------------------------------------------------------ listen

def _adaptor(spec: str) -> Any:
    """``module.function`` (or ``module.Class.method``) from the current directory or sys.path."""
    import importlib
    import os

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    parts = spec.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                target = getattr(target, attr)
        except AttributeError as exc:
            raise click.BadParameter(f"{spec}: {exc}", param_hint="--adaptor") from exc
        if not callable(target):
            raise click.BadParameter(f"{spec} is not callable", param_hint="--adaptor")
        return target
    raise click.BadParameter(f"cannot import a module of {spec!r}", param_hint="--adaptor")


@cli.command("listen")
@click.option("-n", "--name", required=True, metavar="NAME",
              help="Processor, socket or queue to listen to ('*' for everything).")
@click.option("-c", "--channel", type=click.Choice(protocol.CHANNELS), required=True,
              help="task: lifecycle events; log: worker output lines; result: outcomes.")
@click.option("-a", "--adaptor", metavar="MODULE.FUNCTION",
              help="Pass each event (a dict) to this function instead of printing it.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N events.")
@click.option("--for", "duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after SECONDS.")
@click.pass_obj
def listen_cmd(state: State, name: str, channel: str, adaptor: str | None, count: int | None,
               duration: float | None) -> None:
    """Stream the events of NAME from every node of the mesh, one JSON object per line."""
    handler = _adaptor(adaptor) if adaptor else None
    click.echo(f"Listening to {name} ({channel})", err=True)
    seen = 0
    for event in state.client.listen("" if name == "*" else name, channel, timeout=duration):
        if handler is not None:
            handler(event)
        else:
            sys.stdout.write(json.dumps(output.to_jsonable(event), sort_keys=True) + "\n")
            sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            return


# ----------------------------------------------------------------------- apply / export

@cli.command("apply")
@click.option("-f", "--file", "path", required=True, metavar="FILE",
              help="Network file: .yaml/.yml, .toml or .json (others are read as YAML); "
                   "- reads YAML from stdin.")
@click.option("--format", "fmt", type=click.Choice(spec.FORMATS),
              help="Parse FILE as this format whatever its name says.")
@click.option("--dry-run", is_flag=True, help="Show the changes without making them.")
@click.option("--prune", is_flag=True,
              help="Also delete objects of the sections in FILE that it does not name "
                   "(never nodes).")
@json_option
@click.pass_context
def apply_cmd(ctx: click.Context, path: str, fmt: str | None, dry_run: bool, prune: bool,
              json_flag: bool) -> None:
    """Make the network match FILE in one transaction and print each change.

    Fields a file leaves out keep their defaults on new objects and their values on existing
    ones; applying the same file twice changes nothing the second time.
    """
    state = state_of(ctx, json_flag)
    network = spec.load(path, fmt)
    result = state.client.apply(network, dry_run=dry_run, prune=prune)
    if state.json:
        click.echo(output.to_json(result))
        return
    changes = (result.get("changes") if isinstance(result, dict) else None) or []
    for change in changes:
        click.echo(output.change_line(change))
    if not changes:
        click.echo("no changes")
    elif dry_run:
        click.echo(f"would apply {len(changes)} change(s) (dry run)")
    else:
        click.echo(f"applied {len(changes)} change(s)")


@cli.command("export")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True, help="Output format.")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, fmt: str, json_flag: bool) -> None:
    """Print the whole network as a file that `ecctl apply -f` takes back unchanged.

    `ecctl export > network.yaml`; `--json` is `--format json`.
    """
    state = state_of(ctx, json_flag)
    network = state.client.export()
    if not isinstance(network, dict):
        raise EcctlError(f"unexpected export reply from the daemon: {type(network).__name__}")
    click.echo(spec.dump(network, "json" if state.json else fmt), nl=False)


# ------------------------------------------------------------------------- the mesh

#: ``ls nodes``: each node's view in the mesh (``--json`` adds version, last_seen, node_id).
NODE_HEADERS = ["Name", "State", "CPUs", "Busy", "Depth", "Load", "Mem", "Disk", "Endpoint"]


def node_row(node: dict[str, Any]) -> list[Any]:
    """One ``ls nodes`` row; a field an older daemon leaves out shows as ``-``."""
    return [node.get("name"), node.get("state") or None, node.get("cpus"), node.get("busy"),
            node.get("depth"), output.fmt_percent(node.get("load")),
            output.fmt_percent(node.get("memory")), output.fmt_percent(node.get("disk")),
            node.get("endpoint") or None]


@click.command("nodes")
@json_option
@click.pass_context
def ls_nodes_cmd(ctx: click.Context, json_flag: bool) -> None:
    """List nodes: state, CPUs, busy slots, queued calls, load, memory and disk use
    (a table; --json for every field)."""
    state = state_of(ctx, json_flag)
    nodes = state.client.ls("nodes")
    if state.json:
        click.echo(output.to_json(nodes))
        return
    click.echo(output.table(NODE_HEADERS, [node_row(n) for n in nodes or []]))


@cli.group("node")
def node_group() -> None:
    """Take a node of the mesh out of service (drain) and back (undrain)."""


def _drain_line(name: str, reply: Any) -> str:
    state = reply.get("state") if isinstance(reply, dict) else None
    if state in (None, "draining"):
        return f"node {name}: draining (its queued calls move to peers; running calls finish)"
    return f"node {name}: {state}"


@node_group.command("drain")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Return only once the node is drained.")
@click.option("--timeout", "wait_timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_DRAIN_TIMEOUT, show_default=True, metavar="SECONDS",
              help="With --wait: fail (exit 1) if the node is not drained by then.")
@json_option
@click.pass_context
def node_drain_cmd(ctx: click.Context, name: str, wait: bool, wait_timeout: float,
                   json_flag: bool) -> None:
    """Drain node NAME (e.g. before maintenance).

    The node takes no new calls, hands its queued calls to its peers and lets its running calls
    finish. --json prints the daemon's reply (with --wait: the node's `ls nodes` entry once
    drained).
    """
    state = state_of(ctx, json_flag)
    reply = state.client.drain(name)
    if not wait or (isinstance(reply, dict) and reply.get("state") == "drained"):
        show(state, reply, _drain_line(name, reply))
        return
    if not state.json:
        click.echo(_drain_line(name, reply))
    entry = state.client.wait_drained(name, wait_timeout)
    show(state, entry, f"node {name}: drained")


@node_group.command("undrain")
@click.argument("name")
@json_option
@click.pass_context
def node_undrain_cmd(ctx: click.Context, name: str, json_flag: bool) -> None:
    """Let a drained (or draining) node NAME take calls again."""
    state = state_of(ctx, json_flag)
    reply = state.client.undrain(name)
    show(state, reply, f"node {name}: undrained")


for _command in (add_group, update_group, delete_cmd, ls_group, proc_group, trust_cmd, login_cmd, logout_cmd,
                 whoami_cmd):
    cli.add_command(_command)
# ``ls nodes`` shows the mesh columns above instead of the plain listing of ecctl.objects.
ls_group.add_command(ls_nodes_cmd)


def main() -> None:
    """Console entry point."""
    try:
        cli(prog_name="ecctl")
    except BrokenPipeError:
        sys.exit(1)
