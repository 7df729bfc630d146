"""The ``ecctl`` command line: one click group whose commands only call :class:`Client`.

Options resolve as defaults -> ``--config`` TOML file -> environment -> flags. Exit codes:
0 ok, 1 the call or the request failed, 2 usage error or no daemon.
"""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any

import click

import protocol

from . import output
from .client import Client
from .errors import CallTimeout, EcctlError, NoDaemon, RemoteError, ServerError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
KINDS = ("processor", "socket", "queue")


@dataclass
class State:
    """Options shared by every command (the click context object)."""

    endpoint: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        """The Client, created on first use."""
        if self._client is None:
            self._client = Client(self.endpoint, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        """Close the client if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    ctx.exit(code)


class _Group(click.Group):
    """Top group: maps client errors onto one stderr line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoDaemon as exc:
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
    unknown = set(data) - {"endpoint", "timeout"}
    if unknown:
        log.warning("ignoring unknown config keys: %s", ", ".join(sorted(unknown)))
    return data


def _state(ctx: click.Context, json_flag: bool = False) -> State:
    state = ctx.ensure_object(State)
    if json_flag:
        state.json = True
    return state


json_option = click.option("--json", "json_flag", is_flag=True, help="Print the daemon's data as JSON.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar="EC_ENDPOINT", metavar="URL",
              help="Daemon endpoint (ipc://... or tcp://...); env EC_ENDPOINT.")
@click.option("--timeout", envvar="EC_TIMEOUT", type=float, metavar="SECONDS",
              help=f"Per-request deadline (default {DEFAULT_TIMEOUT:g}); env EC_TIMEOUT.")
@click.option("--config", "config_path", envvar="EC_CONFIG", type=click.Path(dir_okay=False),
              metavar="FILE", help="TOML file with `endpoint` and `timeout` keys.")
@json_option
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
@click.pass_context
def cli(ctx: click.Context, endpoint: str | None, timeout: float | None, config_path: str | None,
        json_flag: bool, verbose: bool) -> None:
    """Drive an ElasticCode ecd daemon."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    config = _load_config(config_path)
    if timeout is None:
        timeout = float(config.get("timeout", DEFAULT_TIMEOUT))
    state = State(endpoint=endpoint or config.get("endpoint"), timeout=timeout, json=json_flag)
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
         timeout: float | None) -> None:
    call_args = _call_args(args, data)
    handle = state.client.submit(socket, call_args)
    if no_wait:
        click.echo(handle.id)
        return
    _print_value(handle.get(timeout))


_run_options = [
    click.option("--data", metavar="JSON", help="JSON list of arguments."),
    click.option("--no-wait", is_flag=True, help="Print the call id once accepted; do not wait."),
    click.option("--timeout", "wait", type=float, metavar="S",
                 help="Seconds to wait for the result (default: forever)."),
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
            wait: float | None) -> None:
    """Call SOCKET with each ARG as one string argument and print the result.

    With no ARG and no --data, a non-TTY stdin is the one argument.
    """
    _run(state, socket, args, data, no_wait, wait)


@cli.group("task")
def task_group() -> None:
    """Tasks (seed spelling)."""


@task_group.command("run")
@click.option("-s", "--socket", required=True, help="Socket to call.")
@click.argument("args", nargs=-1)
@_with_run_options
@click.pass_obj
def task_run_cmd(state: State, socket: str, args: tuple[str, ...], data: str | None,
                 no_wait: bool, wait: float | None) -> None:
    """Same as `ecctl run SOCKET`."""
    _run(state, socket, args, data, no_wait, wait)


# --------------------------------------------------------------------------------- add

def _show(state: State, obj: Any, line: str) -> None:
    click.echo(output.to_json(obj) if state.json else line)


@cli.group("add")
def add_group() -> None:
    """Create queues, processors and sockets."""


@add_group.command("queue")
@click.option("-n", "--name", required=True)
@click.option("-t", "--type", "qtype", type=click.Choice(["direct", "topic", "fanout"]),
              default="direct", show_default=True)
@json_option
@click.pass_context
def add_queue_cmd(ctx: click.Context, name: str, qtype: str, json_flag: bool) -> None:
    """Add a queue."""
    state = _state(ctx, json_flag)
    obj = state.client.add_queue(name, qtype)
    _show(state, obj, f"added queue {name} ({qtype})")


@add_group.command("processor")
@click.option("-n", "--name", required=True, help="Name of this processor.")
@click.option("-g", "--gitrepo", required=True, help="Git repo URL.")
@click.option("-m", "--module", required=True, help="Python module (e.g. some.module.path).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes.")
@click.option("-br", "--branch", help="Git branch.")
@click.option("--commit", help="Git commit id.")
@click.option("-r", "--retries", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--retry-delay", type=float, default=1.0, show_default=True, metavar="S")
@click.option("--timelimit", type=float, metavar="S", help="Seconds a call may run.")
@click.option("-rq", "--requirements", help="requirements.txt text.")
@click.option("-d", "--description")
@json_option
@click.pass_context
def add_processor_cmd(ctx: click.Context, name: str, gitrepo: str, module: str, concurrency: int,
                      branch: str | None, commit: str | None, retries: int, retry_delay: float,
                      timelimit: float | None, requirements: str | None,
                      description: str | None, json_flag: bool) -> None:
    """Add a processor (code from a git repo)."""
    state = _state(ctx, json_flag)
    obj = state.client.add_processor(
        name, gitrepo, module, concurrency=concurrency, branch=branch, commit=commit,
        retries=retries, retry_delay=retry_delay, timelimit=timelimit,
        requirements=requirements, description=description)
    _show(state, obj, f"added processor {name}")


@add_group.command("socket")
@click.option("-n", "--name", required=True)
@click.option("-q", "--queue", required=True)
@click.option("-pn", "--processor", required=True)
@click.option("-t", "--task", "function", required=True, help="Function in the processor module.")
@json_option
@click.pass_context
def add_socket_cmd(ctx: click.Context, name: str, queue: str, processor: str, function: str,
                   json_flag: bool) -> None:
    """Add a socket: processor.function fed from a queue."""
    state = _state(ctx, json_flag)
    obj = state.client.add_socket(name, processor, function, queue)
    _show(state, obj, f"added socket {name} ({processor}.{function} on queue {queue})")


# ------------------------------------------------------------------------------ delete

@cli.command("delete")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("-n", "--name", required=True)
@json_option
@click.pass_context
def delete_cmd(ctx: click.Context, kind: str, name: str, json_flag: bool) -> None:
    """Delete a processor, socket or queue."""
    state = _state(ctx, json_flag)
    obj = state.client.delete(kind, name)
    _show(state, obj, f"deleted {kind} {name}")


# ---------------------------------------------------------------------------------- ls

@cli.group("ls")
def ls_group() -> None:
    """List objects and calls."""


def _ls_simple(kind: str, headers: list[str], keys: list[str]) -> None:
    @ls_group.command(kind, help=f"List {kind}.")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, json_flag: bool) -> None:
        state = _state(ctx, json_flag)
        items = state.client.ls(kind)
        if state.json:
            click.echo(output.to_json(items))
            return
        click.echo(output.table(headers, [[item.get(k) for k in keys] for item in items]))


_ls_simple("queues", ["Name", "Type", "Depth"], ["name", "type", "depth"])
_ls_simple("processors",
           ["Name", "Status", "Concurrency", "Module", "Gitrepo", "Commit", "Reason"],
           ["name", "status", "concurrency", "module", "gitrepo", "resolved_commit", "reason"])
_ls_simple("sockets", ["Name", "Processor", "Function", "Queue", "Depth"],
           ["name", "processor", "function", "queue", "depth"])


@ls_group.command("calls")
@click.option("-p", "--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("-r", "--rows", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("-u", "--unfinished", is_flag=True, help="Only calls not finished yet.")
@json_option
@click.pass_context
def ls_calls_cmd(ctx: click.Context, page: int, rows: int, unfinished: bool,
                 json_flag: bool) -> None:
    """List recent calls, newest first."""
    state = _state(ctx, json_flag)
    data = state.client.ls_calls(limit=rows, offset=(page - 1) * rows, unfinished=unfinished)
    if state.json:
        click.echo(output.to_json(data))
        return
    body = [[page, n, c.get("id"), c.get("socket"), c.get("state"), c.get("attempts"),
             output.fmt_time(c.get("created")), output.fmt_time(c.get("started")),
             output.fmt_time(c.get("finished")), c.get("node")]
            for n, c in enumerate(data.get("calls", []), start=1)]
    click.echo(output.table(["Page", "Row", "ID", "Socket", "State", "Attempts", "Created",
                             "Started", "Finished", "Node"], body))
    click.echo(output.page_footer(page, rows, int(data.get("total", 0))))


@ls_group.command("call")
@click.option("--id", "call_id", required=True, help="ID of the call.")
@click.option("-r", "--result", "with_result", is_flag=True, help="Include the result.")
@json_option
@click.pass_context
def ls_call_cmd(ctx: click.Context, call_id: str, with_result: bool, json_flag: bool) -> None:
    """Details of one call: summary, events, optionally the result."""
    state = _state(ctx, json_flag)
    c = state.client.ls_call(call_id, result=with_result)
    if state.json:
        click.echo(output.to_json(c))
        return
    attempts = f"{c.get('attempts')}/{(c.get('max_retries') or 0) + 1}"
    click.echo(output.table(
        ["ID", "Socket", "Function", "State", "Attempts", "Node", "Worker", "Created",
         "Started", "Finished"],
        [[c.get("id"), c.get("socket"),
          f"{c.get('processor')}.{c.get('function')}" if c.get("function") else None,
          c.get("state"), attempts, c.get("node"), c.get("worker"),
          output.fmt_time(c.get("created")), output.fmt_time(c.get("started")),
          output.fmt_time(c.get("finished"))]]))
    if c.get("error"):
        click.echo(f"Error: {output.fmt_error(c.get('error'))}")
    click.echo("Events")
    events = [[e.get("name"), output.fmt_time(e.get("time")), e.get("note")]
              for e in c.get("events") or []]
    click.echo(output.table(["Name", "Time", "Note"], events))
    if with_result and "result" in c:
        click.echo("Result")
        value = c["result"]
        click.echo(value if isinstance(value, str) else json.dumps(output.to_jsonable(value)))


# ------------------------------------------------------------------------------ status

@cli.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, json_flag: bool) -> None:
    """Node status: CPUs, busy slots, workers per processor, queue depths."""
    state = _state(ctx, json_flag)
    s = state.client.status()
    if state.json:
        click.echo(output.to_json(s))
        return
    click.echo(f"node {s.get('node')}  version {s.get('version')}  pid {s.get('pid')}  "
               f"uptime {output.fmt_duration(s.get('uptime'))}")
    click.echo(f"cpus {s.get('cpus')}  busy {s.get('busy')}")
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
    state = _state(ctx, json_flag)
    pong = state.client.ping()
    _show(state, pong, f"{pong['node']} {pong['version']} {pong['rtt'] * 1000:.1f} ms")


def main() -> None:
    """Console entry point."""
    try:
        cli(prog_name="ecctl")
    except BrokenPipeError:
        sys.exit(1)
