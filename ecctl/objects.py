"""``ecctl add|update|delete|ls|proc``: the network's objects and the call listings.

Each kind (queue, node, processor, socket, plug, deployment, flow) has one table of options
(:data:`FIELDS`) from which both ``add KIND`` and ``update KIND`` are built: ``add`` sends the
required fields plus every option that has a value, ``update`` sends ``name`` plus only the
options the user gave. On ``update`` (and ``add``) the word ``none`` clears an optional field.
Kind names are accepted in the singular and the plural (``ls queue`` = ``ls queues``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import click

from . import calltree, output
from .client import KINDS, PROC_ACTIONS
from .context import json_option, json_param, show, state_of

__all__ = ["FIELDS", "add_group", "delete_cmd", "ls_group", "proc_group", "update_group"]


class _Clear:
    """The value of an optional field the user set to ``none``: sent as null."""

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR = _Clear()


class _Nullable(click.ParamType):
    """``inner``, or the word ``none`` (any case) for :data:`CLEAR`."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is CLEAR or (isinstance(value, str) and value.strip().lower() == "none"):
            return CLEAR
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        try:
            return self.inner.get_metavar(param, ctx)  # type: ignore[call-arg]
        except TypeError:  # click < 8.2 takes no ctx
            return self.inner.get_metavar(param)  # type: ignore[call-arg]


@dataclass(frozen=True)
class Opt:
    """One option of ``add KIND`` / ``update KIND``; ``key`` is the field name sent."""

    decls: tuple[str, ...]
    key: str
    help: str
    type: Any = None
    required: bool = False      # on add
    default: Any = None         # on add (sent); update has no defaults
    nullable: bool = False      # ``none`` clears it
    multiple: bool = False
    metavar: str | None = None

    def option(self, *, add: bool) -> click.Option:
        """The click option for ``add`` (required/default apply) or ``update``."""
        help_text = self.help
        kwargs: dict[str, Any] = {"metavar": self.metavar, "multiple": self.multiple}
        if "/" in self.decls[0]:                       # --on/--off: None when not given
            return click.Option([*self.decls, self.key], default=None, help=help_text)
        param_type = self.type if self.type is not None else click.STRING
        if self.nullable:
            param_type = _Nullable(param_type)
            if not add:
                help_text += " `none` clears it."
        if add and self.required:
            kwargs["required"] = True
        if add and self.default is not None:
            kwargs.update(default=self.default, show_default=True)
        return click.Option([*self.decls, self.key], type=param_type, help=help_text, **kwargs)


_DESCRIPTION = Opt(("-d", "--description"), "description", "Free text.", nullable=True)
_POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)

#: Options of ``add``/``update`` per kind (``-n/--name`` comes first in every one).
FIELDS: dict[str, tuple[Opt, ...]] = {
    "queue": (
        Opt(("-t", "--type"), "type", "Queue type.", click.Choice(["direct", "topic", "fanout"]),
            default="direct"),
        Opt(("--durable/--transient",), "durable", "Whether it survives restarts (default durable)."),
        Opt(("--max-length",), "max_length", "Most calls it holds (default unlimited).",
            click.IntRange(min=1), nullable=True, metavar="N"),
        Opt(("--message-ttl",), "message_ttl", "Seconds a call may wait in it (default forever).",
            click.IntRange(min=1), nullable=True, metavar="S"),
        _DESCRIPTION,
    ),
    "node": (
        Opt(("--endpoint",), "endpoint", "Where its ecd listens (tcp://host:port).", metavar="URL"),
        Opt(("--cpus",), "cpus", "CPUs it offers (default 1).", click.IntRange(min=1)),
        _DESCRIPTION,
        Opt(("--key",), "key", "Its public key (`ecd keys show` there): peers admit only registered keys; "
            "a new key revokes the old one.", metavar="KEY"),
    ),
    "processor": (
        Opt(("-g", "--gitrepo"), "gitrepo", "Git repo URL.", required=True),
        Opt(("-m", "--module"), "module", "Python module (e.g. some.module.path).", required=True),
        Opt(("-c", "--concurrency"), "concurrency", "Worker processes.", click.IntRange(min=1),
            default=1),
        Opt(("-br", "--branch"), "branch", "Git branch.", nullable=True),
        Opt(("--commit",), "commit", "Git commit id (not with --tag).", nullable=True),
        Opt(("--tag",), "tag", "Git tag (not with --commit).", nullable=True),
        Opt(("-r", "--retries"), "retries", "Retries of a failed call.", click.IntRange(min=0),
            default=0),
        Opt(("--retry-delay",), "retry_delay", "Seconds before a retry.", click.FloatRange(min=0),
            default=1.0, metavar="S"),
        Opt(("--timelimit",), "timelimit", "Seconds a call may run.", _POSITIVE_SECONDS,
            nullable=True, metavar="S"),
        Opt(("--rate-limit",), "rate_limit", "Most calls started per second/minute/hour.",
            nullable=True, metavar="N/s|N/m|N/h"),
        Opt(("-rq", "--requirements"), "requirements", "requirements.txt text.", nullable=True),
        _DESCRIPTION,
        Opt(("--enabled/--disabled",), "enabled", "Whether nodes run it (default enabled)."),
    ),
    "socket": (
        Opt(("-q", "--queue"), "queue", "Queue its calls wait in.", required=True),
        Opt(("-pn", "--processor"), "processor", "Processor whose module has the function.",
            required=True),
        Opt(("-t", "--task"), "function", "Function in the processor module.", required=True),
        Opt(("--interval",), "interval", "Call it every S seconds (at least 0.1).", click.FloatRange(min=0.1),
            nullable=True, metavar="S"),
        Opt(("--cron",), "cron", "Call it on a cron schedule (5 fields, or 6 with seconds last).",
            nullable=True, metavar="'MIN HOUR DOM MON DOW'"),
        Opt(("--catch-up",), "catch_up", "Ticks missed while no node ran it: fire once for all of "
            "them, or once for each.", click.Choice(["once", "all"]), metavar="once|all"),
        _DESCRIPTION,
    ),
    "plug": (
        Opt(("--source",), "source", "Socket whose outcome is sent on.", required=True,
            metavar="SOCKET"),
        Opt(("--target",), "target", "Socket that receives it.", required=True, metavar="SOCKET"),
        Opt(("--argument",), "argument", "Argument of the target function it fills.",
            nullable=True, metavar="NAME"),
        Opt(("--type",), "type", "Send the source's RESULT or its ERROR.",
            click.Choice(["RESULT", "ERROR"], case_sensitive=False), default="RESULT",
            metavar="RESULT|ERROR"),
        Opt(("-q", "--queue"), "queue", "Queue the target's calls wait in.", required=True),
        _DESCRIPTION,
    ),
    "deployment": (
        Opt(("-pn", "--processor"), "processor", "Processor to run.", required=True),
        Opt(("--node",), "node", "Node to run it on.", required=True),
        Opt(("--cpus",), "cpus", "CPUs it takes there (default: its concurrency).",
            click.IntRange(min=1), nullable=True),
    ),
    "flow": (
        Opt(("-p", "--processor"), "processors",
            "A processor of the flow (repeat it; on update the list is replaced).",
            multiple=True, metavar="PROCESSOR"),
        _DESCRIPTION,
    ),
}


def _given(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """The options that have a value (in :data:`FIELDS` order), ``none`` turned into null,
    repeated options into lists."""
    fields: dict[str, Any] = {}
    for key in (opt.key for opt in FIELDS[kind]):
        value = values.get(key)
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            value = list(value)
        fields[key] = None if value is CLEAR else value
    return fields


def _check(kind: str, fields: dict[str, Any]) -> None:
    if kind == "processor" and fields.get("commit") and fields.get("tag"):
        raise click.UsageError("--commit and --tag exclude each other")


_ADDED: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "queue": lambda n, f: f"added queue {n} ({f.get('type', 'direct')})",
    "node": lambda n, f: f"added node {n}" + (f" ({f['endpoint']})" if f.get("endpoint") else ""),
    "processor": lambda n, f: f"added processor {n}",
    "socket": lambda n, f: f"added socket {n} ({f['processor']}.{f['function']} on queue {f['queue']})",
    "plug": lambda n, f: f"added plug {n} ({f['source']} -> {f['target']}, "
                         f"{f.get('type', 'RESULT')} on queue {f['queue']})",
    "deployment": lambda n, f: f"added deployment {n} ({f['processor']} on node {f['node']})",
    "flow": lambda n, f: f"added flow {n} ({len(f.get('processors', []))} processor(s))",
}


def _object_command(kind: str, *, add: bool) -> click.Command:
    """``add KIND`` or ``update KIND`` from :data:`FIELDS`."""
    params: list[click.Parameter] = [click.Option(["-n", "--name"], required=True,
                                                  help=f"Name of the {kind}.")]
    params += [opt.option(add=add) for opt in FIELDS[kind]]
    params.append(json_param())

    @click.pass_context
    def callback(ctx: click.Context, name: str, json_flag: bool, **values: Any) -> None:
        state = state_of(ctx, json_flag)
        fields = _given(kind, values)
        _check(kind, fields)
        if add:
            obj = state.client.add(kind, name=name, **fields)
            show(state, obj, _ADDED[kind](name, fields))
            return
        if not fields:
            raise click.UsageError(f"nothing to change: give at least one option of "
                                   f"`ecctl update {kind}` besides --name")
        obj = state.client.update(kind, name, **fields)
        changed = ", ".join(f"{key}={output.fmt_value(value)}" for key, value in fields.items())
        show(state, obj, f"updated {kind} {name}: {changed}")

    if add:
        text = f"Add a {kind}."
    else:
        text = f"Change a {kind}: only the options given are sent."
    return click.Command(kind, params=params, callback=callback, help=text)


class _KindGroup(click.Group):
    """A group of per-kind commands that also answers to the other number (queue/queues)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            singular = cmd_name[:-1] if cmd_name.endswith("s") else cmd_name
            if singular in KINDS:
                other = singular if singular != cmd_name else cmd_name + "s"
                command = super().get_command(ctx, other)
        return command

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        return (command.name if command is not None else name), command, rest


# ----------------------------------------------------------------------------- add/update

@click.group("add", cls=_KindGroup)
def add_group() -> None:
    """Create queues, nodes, processors, sockets, plugs, deployments and flows."""


@click.group("update", cls=_KindGroup)
def update_group() -> None:
    """Change fields of an object; only the options given are sent."""


for _kind in KINDS:
    add_group.add_command(_object_command(_kind, add=True))
    update_group.add_command(_object_command(_kind, add=False))


@click.group("delete", cls=_KindGroup)
def delete_cmd() -> None:
    """Delete an object (refused while something refers to it)."""


def _delete_command(kind: str) -> click.Command:
    @click.pass_context
    def callback(ctx: click.Context, name: str, json_flag: bool) -> None:
        state = state_of(ctx, json_flag)
        obj = state.client.delete(kind, name)
        show(state, obj, f"deleted {kind} {name}")

    return click.Command(kind, callback=callback, help=f"Delete a {kind} (refused while something refers to it).",
                         params=[click.Option(["-n", "--name"], required=True, help=f"Name of the {kind}."),
                                 json_param()])


for _kind in KINDS:
    delete_cmd.add_command(_delete_command(_kind))


# ------------------------------------------------------------------------------------ proc

_PROC_DONE = {
    "pause": "paused processor {name} (calls keep queueing)",
    "resume": "resumed processor {name}",
    "stop": "stopped processor {name} (its workers end; calls keep queueing)",
    "start": "started processor {name}",
    "restart": "restarted processor {name} (its workers are replaced)",
}
_PROC_HELP = {
    "pause": "Stop handing calls to a processor; its calls keep queueing.",
    "resume": "Hand calls to a paused processor again.",
    "stop": "Stop a processor's workers; its calls keep queueing.",
    "start": "Start a stopped processor's workers again.",
    "restart": "Replace a processor's workers (e.g. to load new code).",
    "remove": "Delete a processor with its sockets, their plugs, its deployments and flow memberships.",
}
_REMOVED = (("sockets", "sockets"), ("plugs", "plugs"), ("deployments", "deployments"),
            ("flows", "flows (membership)"))


@click.group("proc")
def proc_group() -> None:
    """Run or manage processors."""


def _proc_command(action: str) -> click.Command:
    @click.pass_context
    def callback(ctx: click.Context, name: str, json_flag: bool) -> None:
        state = state_of(ctx, json_flag)
        data = state.client.proc(action, name)
        if state.json:
            click.echo(output.to_json(data))
        elif action != "remove":
            click.echo(_PROC_DONE[action].format(name=name))
        else:
            click.echo(f"removed processor {name}")
            for key, label in _REMOVED:
                names = data.get(key) if isinstance(data, dict) else None
                if names:
                    click.echo(f"  {label}: {', '.join(str(n) for n in names)}")

    return click.Command(action, callback=callback, help=_PROC_HELP[action], params=[
        click.Option(["-n", "--name"], required=True, help="Name of the processor."), json_param()])


for _action in PROC_ACTIONS:
    proc_group.add_command(_proc_command(_action))


# -------------------------------------------------------------------------------------- ls

@click.group("ls", cls=_KindGroup)
def ls_group() -> None:
    """List objects and calls."""


def _blank(value: Any) -> Any:
    return None if value == "" else value


def _yes(value: Any) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _schedule(sock: dict[str, Any]) -> str | None:
    if sock.get("interval") is not None:
        return f"every {output.fmt_value(sock['interval'])}s"
    return sock.get("cron")


#: ``ls KINDS`` tables: headers and one row per object.
TABLES: dict[str, tuple[list[str], Callable[[dict[str, Any]], list[Any]]]] = {
    "queues": (["Name", "Type", "Depth", "Durable", "Max length", "TTL"],
               lambda q: [q.get("name"), q.get("type"), q.get("depth"), _yes(q.get("durable")),
                          q.get("max_length"), q.get("message_ttl")]),
    "nodes": (["Name", "Endpoint", "CPUs", "Version", "Last seen"],
              lambda n: [n.get("name"), _blank(n.get("endpoint")), n.get("cpus"),
                         _blank(n.get("version")),
                         output.fmt_time(n["last_seen"]) if n.get("last_seen") else "never"]),
    "processors": (["Name", "Status", "Concurrency", "Module", "Gitrepo", "Commit", "Reason"],
                   lambda p: [p.get("name"), p.get("status"), p.get("concurrency"), p.get("module"),
                              p.get("gitrepo"), p.get("resolved_commit"), _blank(p.get("reason"))]),
    "sockets": (["Name", "Processor", "Function", "Queue", "Depth", "Schedule"],
                lambda s: [s.get("name"), s.get("processor"), s.get("function"), s.get("queue"),
                           s.get("depth"), _schedule(s)]),
    "plugs": (["Name", "Source", "Target", "Argument", "Type", "Queue"],
              lambda p: [p.get("name"), p.get("source"), p.get("target"), p.get("argument"),
                         p.get("type"), p.get("queue")]),
    "deployments": (["Name", "Processor", "Node", "CPUs"],
                    lambda d: [d.get("name"), d.get("processor"), d.get("node"), d.get("cpus")]),
    "flows": (["Name", "Processors", "Description"],
              lambda f: [f.get("name"), ", ".join(f.get("processors") or []) or None,
                         f.get("description")]),
}


def _ls_command(kinds: str) -> click.Command:
    headers, row = TABLES[kinds]

    @click.pass_context
    def callback(ctx: click.Context, json_flag: bool) -> None:
        state = state_of(ctx, json_flag)
        items = state.client.ls(kinds)
        if state.json:
            click.echo(output.to_json(items))
            return
        click.echo(output.table(headers, [row(item) for item in items]))

    return click.Command(kinds, callback=callback, params=[json_param()],
                         help=f"List {kinds} (a table; --json for every field).")


for _kinds in TABLES:
    ls_group.add_command(_ls_command(_kinds))


@ls_group.command("calls")
@click.option("-p", "--page", type=click.IntRange(min=1), default=1, show_default=True,
              help="Page to show (1 = newest).")
@click.option("-r", "--rows", type=click.IntRange(min=1), default=10, show_default=True,
              help="Calls per page.")
@click.option("-u", "--unfinished", is_flag=True, help="Only calls not finished yet.")
@click.option("-s", "--socket", help="Only calls of this socket.")
@json_option
@click.pass_context
def ls_calls_cmd(ctx: click.Context, page: int, rows: int, unfinished: bool, socket: str | None,
                 json_flag: bool) -> None:
    """List calls, newest first, one page at a time."""
    state = state_of(ctx, json_flag)
    data = state.client.ls_calls(page=page, rows=rows, unfinished=unfinished, socket=socket)
    if state.json:
        click.echo(output.to_json(data))
        return
    page = _int(data.get("page"), page)
    rows = _int(data.get("rows"), rows)
    total = _int(data.get("total"), 0)
    pages = data.get("pages")
    body = [[page, n, c.get("id"), c.get("socket"), c.get("state"), c.get("attempts"),
             output.fmt_time(c.get("created")), output.fmt_time(c.get("started")),
             output.fmt_time(c.get("finished")), c.get("node")]
            for n, c in enumerate(data.get("calls") or [], start=1)]
    click.echo(output.table(["Page", "Row", "ID", "Socket", "State", "Attempts", "Created",
                             "Started", "Finished", "Node"], body))
    click.echo(output.page_footer(page, rows, total, pages if isinstance(pages, int) else None))


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@ls_group.command("call")
@click.option("--id", "call_id", required=True, help="ID of the call.")
@click.option("-r", "--result", "with_result", is_flag=True, help="Include the result.")
@click.option("-t", "--tree", is_flag=True, help="Show the forward call tree: the calls it led to.")
@click.option("-g", "--graph", is_flag=True, help="Show the complete call graph of its run.")
@click.option("-f", "--flow", is_flag=True, help="Show every call of its run (workflow).")
@json_option
@click.pass_context
def ls_call_cmd(ctx: click.Context, call_id: str, with_result: bool, tree: bool, graph: bool, flow: bool,
                json_flag: bool) -> None:
    """Details of one call: summary, provenance, events, optionally the result."""
    state = state_of(ctx, json_flag)
    if sum((tree, graph, flow)) > 1:
        raise click.UsageError("give one of --tree, --graph and --flow")
    if tree or graph or flow:
        answer = state.client.ls_call(call_id, result=with_result, tree=tree, graph=graph, flow=flow)
        click.echo(output.to_json(answer) if state.json else calltree.render(answer, with_result))
        return
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
    click.echo("Provenance")
    click.echo(output.table(["Kind", "Via", "Parent", "Root", "Children"],
                            [[c.get("kind") or "call", c.get("via"), c.get("parent"), c.get("root"),
                              len(c.get("children") or ())]]))
    click.echo("Events")
    events = [[e.get("name"), output.fmt_time(e.get("time")), e.get("note")]
              for e in c.get("events") or []]
    click.echo(output.table(["Name", "Time", "Note"], events))
    if with_result and "result" in c:
        click.echo("Result")
        value = c["result"]
        click.echo(value if isinstance(value, str) else json.dumps(output.to_jsonable(value)))
