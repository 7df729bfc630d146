"""What a finished call sets off: the calls of its plugs, the arguments of joins, the next steps
of its workflow (SPEC.md "Data flows").

The node asks :meth:`Dataflow.on_final` for the records a call's final record sets off just
before it writes that final record, and writes them in the same commit: a plug's call exists
exactly when its upstream call's outcome does, and a crash can never keep one without the other.
Every record made here has an id derived from what caused it (:func:`ecd.calls.derived_id`), so
an upstream call that ran twice (a crash after the run, a takeover) still makes one downstream
call, and a record that exists already is never made again.

* **Plugs.** When a call on a plug's source socket ends (``RESULT`` plugs: done; ``ERROR``
  plugs: failed), a call of the plug's target socket is made with the result (or the error map)
  as its first argument; id ``p-hash(upstream id, plug)``. Every plug from the socket fires; the
  plugs are those of the topology at the moment the upstream call ends.
* **Joins.** A plug that names an ``argument`` delivers that keyword argument. The target
  runs once every argument named by the plugs into it arrived **for the same run**: arrivals
  are paired by the run's root call (``run``; for calls made from a streamed item, the root and
  the item's position). The join waits, durable, as a ``join`` record ``j-hash(target, run)``
  in state ``waiting``, then becomes a queued call.
* **Workflows.** A step of a workflow (``flow``, ``step``) that ends records its result in the
  workflow's record and starts what comes next (:mod:`ecd.workflow`); the last one ends the
  workflow, a failed one fails it with its error and call id.

Derived records are owned by the node that writes the upstream final (the owner of the whole
run, normally) and are replicated to the same nodes as their parent, so a run's records move
together on takeover.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import protocol

from . import calls as C
from . import workflow as W
from .errors import InvalidName, NotFound

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)

#: Most bytes of step results a workflow record keeps; a workflow whose results grow beyond
#: this fails (its record is rewritten as each step ends).
MAX_FLOW_RESULTS = 16 << 20
#: Most bytes of a workflow's graph (its steps and their bound arguments): with its results, a
#: workflow record fits in one peer message.
MAX_FLOW_GRAPH = 16 << 20


@dataclass
class Derived:
    """What a final record sets off: ``records`` to write with it (new calls, waiting joins,
    the workflow's record as it goes on) and ``finals``, records that end with it (a workflow)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    joins: dict[str, dict[str, Any]] = field(default_factory=dict)  # join id -> its record, as it goes

    def __bool__(self) -> bool:
        return bool(self.records or self.finals or self.children)


class Dataflow:
    """Plugs, joins and workflows of one node (the loop thread owns it)."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self._topology: Any = None
        self._from: dict[str, list[Any]] = {}       # source socket -> its plugs
        self._needs: dict[str, frozenset[str]] = {}  # target socket -> arguments plugged into it
        self.fired = 0     # plug calls made
        self.joined = 0    # joins completed
        self.flows = 0     # workflows started

    # -- topology -------------------------------------------------------------------------------

    def _index(self) -> None:
        topology = self.node.topology
        if topology is self._topology:
            return
        self._topology = topology
        plugs_from: dict[str, list[Any]] = {}
        needs: dict[str, set[str]] = {}
        for plug in sorted(topology.plugs.values(), key=lambda p: p.name):
            plugs_from.setdefault(plug.source, []).append(plug)
            if plug.argument:
                needs.setdefault(plug.target, set()).add(plug.argument)
        self._from = plugs_from
        self._needs = {target: frozenset(args) for target, args in needs.items()}

    def plugs_from(self, socket: str) -> list[Any]:
        self._index()
        return self._from.get(socket, [])

    def plug_targets(self) -> dict[str, list[Any]]:
        """Source socket -> its plugs (for back-pressure on full target queues)."""
        self._index()
        return self._from

    # -- records --------------------------------------------------------------------------------

    def _call(self, call_id: str, socket_name: str, args: bytes, kwargs: bytes, parent: dict[str, Any],
              via: str, note: str) -> dict[str, Any]:
        """A new call made by ``parent``'s end (NotFound if the socket does not exist)."""
        node = self.node
        topology = node.topology
        socket = topology.sockets.get(socket_name)
        if socket is None:
            raise NotFound(f"unknown socket '{socket_name}'")
        processor = topology.processors[socket.processor]
        root = parent.get("root") or parent["id"]
        record = C.new_record(
            call_id=call_id, seq=node.wal.next_seq(), owner=node.node_id, node=node.config.name,
            socket=socket.name, processor=processor.name, function=socket.function, args=args,
            kwargs=kwargs, retries=processor.retries, retry_delay=processor.retry_delay,
            timelimit=processor.timelimit, parent=parent["id"], root=root, via=via, note=note)
        run = parent.get("run")
        if run and run != root:
            record["run"] = run
        if parent.get("user"):
            record["user"] = parent["user"]  # what a call sets off belongs to whoever sent it
        node.place(record, like=parent)
        return record

    # -- the hook -------------------------------------------------------------------------------

    def sets_off(self, outcome: dict[str, Any]) -> bool:
        """Could ``outcome`` set anything off (a workflow step, or a socket with plugs)? The
        common case, a plain call of an unplugged socket, costs this one check."""
        if self._topology is not self.node.topology:
            self._index()
        return bool(outcome.get("flow")) or outcome["socket"] in self._from

    def on_final(self, outcome: dict[str, Any]) -> Derived:
        """The records ``outcome`` (a final record about to be written) sets off; its
        ``children`` are set to the ids of the calls it makes or feeds."""
        out = Derived()
        if C.kind_of(outcome) == C.FLOW:
            return out
        plugs = self.plugs_from(outcome["socket"])
        if plugs:
            self._fire(outcome, plugs, out)
        if outcome.get("flow"):
            self._step_ended(outcome, out)
        if out.finals:  # a record that ends in this commit is written once, as it ends
            ending = {record["id"] for record in out.finals}
            out.records = [record for record in out.records if record["id"] not in ending]
        if out.children:
            outcome["children"] = list(dict.fromkeys([*(outcome.get("children") or ()), *out.children]))
        return out

    def on_item(self, record: dict[str, Any], index: int, value: bytes) -> Derived:
        """The records item ``index`` of a streaming call sets off (its socket's RESULT plugs fire
        once per item); the running record lists them in its ``children``."""
        out = Derived()
        plugs = self.plugs_from(record["socket"])
        if plugs:
            self._fire(record, plugs, out, item=index, value=value)
            if out.children:
                record["children"] = list(dict.fromkeys([*(record.get("children") or ()), *out.children]))
        return out

    # -- plugs ----------------------------------------------------------------------------------

    def _fire(self, outcome: dict[str, Any], plugs: list[Any], out: Derived, item: int | None = None,
              value: bytes | None = None) -> None:
        if item is None and outcome.get("streamed") and outcome["state"] == C.DONE:
            self._fire_items(outcome, plugs, out)
            plugs = [plug for plug in plugs if plug.type != "RESULT"]
        done = outcome["state"] == C.DONE
        for plug in plugs:
            if item is not None:  # a streamed item: RESULT plugs fire per item
                if plug.type != "RESULT" or value is None:
                    continue
                payload = value
            elif plug.type == "RESULT":
                if not done:
                    if plug.argument and not outcome.get("streamed"):  # it will never come: the join fails
                        self._join_fails(outcome, plug, out)
                    continue
                payload = outcome.get("result") or b"\xc0"
            elif outcome["state"] == C.FAILED:
                payload = protocol.pack(self._error_value(outcome))
            else:
                continue
            try:
                if plug.argument:
                    self._arrive(outcome, plug, payload, out, item)
                else:
                    self._plug_call(outcome, plug, payload, out, item)
            except NotFound as exc:  # the target went away between two topology reads
                logger.warning("plug %s did not fire for call %s: %s", plug.name, outcome["id"], exc)

    def _fire_items(self, outcome: dict[str, Any], plugs: list[Any], out: Derived) -> None:
        """A streaming call ended: its RESULT plugs fire for the items of its result (the list of
        its items) that did not fire as they came (``items_fired``: items from another node lost
        on the way), in the commit of the call's end; derived ids keep each item's calls one."""
        if not any(plug.type == "RESULT" for plug in plugs):
            return
        try:
            items = protocol.split_array(outcome.get("result") or b"\x90")
        except protocol.ProtocolError as exc:
            logger.error("streamed call %s: its result is not a list of items (%s); no plug fired", outcome["id"], exc)
            return
        for index in range(int(outcome.get("items_fired") or 0), len(items)):
            self._fire(outcome, plugs, out, item=index, value=items[index])

    @staticmethod
    def _error_value(outcome: dict[str, Any]) -> dict[str, Any]:
        error = outcome.get("error") or {}
        return {"type": str(error.get("type", "Error")), "message": str(error.get("message", "")),
                "traceback": str(error.get("traceback", "")), "call_id": outcome["id"],
                "socket": outcome["socket"]}

    def _plug_call(self, outcome: dict[str, Any], plug: Any, payload: bytes, out: Derived,
                   item: int | None) -> None:
        parts = (outcome["id"], plug.name) if item is None else (outcome["id"], plug.name, str(item))
        call_id = C.derived_id("p", *parts)
        out.children.append(call_id)
        if self.node.holds(call_id):
            return  # the upstream call ended before (it ran twice): its plug call exists
        via = f"plug {plug.name}" if item is None else f"plug {plug.name} item {item}"
        parent = outcome if item is None else {**outcome, "run": self._run(outcome, item)}
        record = self._call(call_id, plug.target, b"\x91" + payload, b"\x80", parent, via,
                            f"Received call {plug.target} from call {outcome['id']} ({via})")
        out.records.append(record)
        self.fired += 1

    @staticmethod
    def _run(outcome: dict[str, Any], item: int | None = None) -> str:
        """The run ``outcome`` belongs to (joins pair arguments of one run): its root call's, or
        for calls made from a streamed item, one of its own that pairs items of one position."""
        run = outcome.get("run") or outcome.get("root") or outcome["id"]
        return run if item is None else f"{run}/{outcome['id']}:{item}"

    # -- joins ----------------------------------------------------------------------------------

    def _arrive(self, outcome: dict[str, Any], plug: Any, payload: bytes, out: Derived, item: int | None) -> None:
        run = self._run(outcome, item)
        join_id = C.derived_id("j", plug.target, run)
        out.children.append(join_id)
        node = self.node
        needs = self._needs.get(plug.target, frozenset({plug.argument}))
        record = out.joins.get(join_id) or self._live_join(join_id)
        new = record is None
        if new:
            if self.node.holds(join_id):
                logger.debug("argument %s of join %s arrived after the join ran or moved; ignored", plug.argument, join_id)
                return
            record = self._new_join(join_id, plug.target, outcome, run,
                                    f"Join of {plug.target} for run {run}: waits for {', '.join(sorted(needs))}")
            C.mark_waiting(record, f"Waiting for {', '.join(sorted(needs))}")
        elif C.kind_of(record) != C.JOIN or record["state"] != C.WAITING:
            logger.info("argument %s of join %s arrived after it started; ignored", plug.argument, join_id)
            return
        arrived = record["join"]
        if plug.argument in arrived:
            if arrived[plug.argument][1] != outcome["id"]:
                logger.warning("join %s: argument %s arrived twice in one run (from %s and %s); the first is kept",
                               join_id, plug.argument, arrived[plug.argument][1], outcome["id"])
            return
        arrived[plug.argument] = [payload, outcome["id"]]
        record["parents"] = list(dict.fromkeys([*record.get("parents", ()), outcome["id"]]))
        record["parent"] = outcome["id"]
        missing = sorted(needs - set(arrived))
        now = time.time()
        if missing:
            record["events"].append(["arrived", now, f"Argument {plug.argument} from call {outcome['id']}; "
                                                     f"waiting for {', '.join(missing)}"])
        else:
            record["kwargs"] = protocol.pack_map([(name, value) for name, (value, _) in sorted(arrived.items())])
            C.mark_ready(record, f"Argument {plug.argument} from call {outcome['id']}; all arguments arrived")
            self.joined += 1
        if join_id not in out.joins:
            if not new and "version" in record:
                record["version"] = int(record.get("version") or 0) + 1
            out.joins[join_id] = record
            out.records.append(record)

    def _new_join(self, join_id: str, target: str, outcome: dict[str, Any], run: str, note: str) -> dict[str, Any]:
        """A join record of ``target`` for ``run``, with no argument yet (NotFound: no such socket)."""
        record = self._call(join_id, target, b"\x90", b"\x80", {**outcome, "run": run}, "join", note)
        record.update(kind=C.JOIN, join={}, parents=[], events=record["events"][:1])
        return record

    def _live_join(self, join_id: str) -> dict[str, Any] | None:
        """The record of a join this node owns that may still take arguments (not one ending
        now: its final record is on its way to the log)."""
        node = self.node
        record = node.active.get(join_id)
        if record is None or record.get("leased_from") or join_id in node.finalizing:
            return None
        return record

    def _join_fails(self, outcome: dict[str, Any], plug: Any, out: Derived) -> None:
        """``outcome`` failed, so the argument its RESULT plug names will never arrive for its
        run: the join of that run fails (in this commit) with an ``UpstreamFailed`` error naming
        the call, and the ERROR plugs of the join's socket fire for it, as for any failed call."""
        run = self._run(outcome)
        join_id = C.derived_id("j", plug.target, run)
        out.children.append(join_id)
        record = out.joins.get(join_id) or self._live_join(join_id)
        if record is None:
            if self.node.holds(join_id):
                return  # it ran, failed or is ending already
            try:
                record = self._new_join(join_id, plug.target, outcome, run, f"Join of {plug.target} for run {run}")
            except NotFound as exc:
                logger.warning("plug %s: %s", plug.name, exc)
                return
        elif C.kind_of(record) != C.JOIN or record["state"] != C.WAITING:
            return  # it has all its arguments already, or ended
        error = outcome.get("error") or {}
        ended = {**record, "events": list(record["events"]), "parent": outcome["id"],
                 "parents": [*record.get("parents", ()), outcome["id"]]}
        C.mark_failed(ended, C.error_dict(
            "UpstreamFailed", f"argument {plug.argument} will not arrive: call {outcome['id']} ({outcome['socket']}) "
                              f"failed: {error.get('type', 'Error')}: {error.get('message', '')}"))
        out.joins[join_id] = ended
        out.finals.append(ended)
        plugs = self.plugs_from(ended["socket"])
        if plugs:  # what the join's own failure sets off (sharing this commit's joins)
            sub = Derived(joins=out.joins)
            self._fire(ended, plugs, sub)
            ended["children"] = list(dict.fromkeys(sub.children))
            out.records.extend(sub.records)
            out.finals.extend(sub.finals)

    # -- workflows ------------------------------------------------------------------------------

    def start_flow(self, flow_id: str, graph: dict[str, Any], args: bytes, kwargs: bytes,
                   user: str = "") -> list[dict[str, Any]]:
        """The records of a new workflow: its own record, then its first steps (all written in
        one commit). NotFound for a step of an unknown socket, InvalidName for a bad graph."""
        node = self.node
        graph = W.normalize(graph)
        graph_bytes = len(protocol.pack(graph))
        if graph_bytes > MAX_FLOW_GRAPH:
            raise InvalidName(f"the workflow is {graph_bytes} bytes (its steps and their arguments); "
                              f"at most {MAX_FLOW_GRAPH} bytes fit in one")
        for path, step in W.steps(graph):
            if step[W.STEP] not in node.topology.sockets:
                raise NotFound(f"unknown socket '{step[W.STEP]}' (workflow step {path or 'root'})")
        label = W.label(graph)
        flow = C.new_record(
            call_id=flow_id, seq=node.wal.next_seq(), owner=node.node_id, node=node.config.name,
            socket=f"workflow:{label}", processor="", function=label, args=args, kwargs=kwargs,
            retries=0, retry_delay=0.0, timelimit=None, note=f"Received workflow ({label})")
        flow.update(kind=C.FLOW, graph=graph, graph_bytes=graph_bytes, done={}, done_bytes=0)
        if user:
            flow["user"] = user
        node.place(flow)
        first = W.first_steps(graph, "")
        C.mark_started(flow, f"Workflow started: {len(first)} first step(s)")
        given_args, given_kwargs = protocol.unpack(args), protocol.unpack(kwargs)
        records = [self._step(flow, flow, path, step, given_args, given_kwargs) for path, step in first]
        flow["children"] = [r["id"] for r in records]
        self.flows += 1
        return [flow, *records]

    def _step(self, flow: dict[str, Any], parent: dict[str, Any], path: str, step: dict[str, Any],
              given: list[Any] | None, given_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        args, kwargs = W.step_input(step, given, given_kwargs)
        record = self._call(self.step_id(flow["id"], path), step[W.STEP], args, kwargs, parent,
                            f"step {path}", f"Received call {step[W.STEP]} (step {path} of workflow {flow['id']})")
        record.update(flow=flow["id"], step=path)
        return record

    @staticmethod
    def step_id(flow_id: str, path: str) -> str:
        return C.derived_id("s", flow_id, path)

    def _step_ended(self, outcome: dict[str, Any], out: Derived) -> None:
        node = self.node
        flow_id, path = outcome["flow"], outcome.get("step")
        flow = node.active.get(flow_id)
        if flow is None or C.kind_of(flow) != C.FLOW or flow_id in node.finalizing or flow.get("leased_from"):
            if flow_id not in node.finalizing and node.wal.get(flow_id) is None:
                logger.warning("step %s of workflow %s ended, but the workflow is not owned here", path, flow_id)
            return
        graph = flow["graph"]
        if not isinstance(path, str) or path in flow["done"]:
            return  # a step that ran twice: its first outcome counted
        try:
            W.node_at(graph, path)
        except (KeyError, IndexError, ValueError, TypeError):
            logger.error("workflow %s has no step %r", flow_id, path)
            return
        out.children.extend(self.step_id(flow_id, p) for p in W.successors(graph, path))
        if outcome["state"] != C.DONE:
            self._fail_flow(flow, outcome, out)
            return
        result = outcome.get("result") or b"\xc0"
        flow["done"][path] = result
        flow["done_bytes"] = int(flow.get("done_bytes") or 0) + len(result)
        if flow["done_bytes"] > MAX_FLOW_RESULTS:
            self._fail_flow(flow, {**outcome, "error": C.error_dict(
                "WorkflowTooLarge", f"the results of the workflow's steps exceed {MAX_FLOW_RESULTS} bytes")}, out)
            return
        try:
            starts, final, input_path = W.advance(graph, flow["done"], path)
            if final is not None:
                ended = _copy(flow)
                C.mark_done(ended, final)
                out.finals.append(ended)
                return
            if starts:
                given = [protocol.unpack(W.value(graph, flow["done"], input_path))]
                out.records.extend([self._step(flow, outcome, p, step, given) for p, step in starts])
        except NotFound as exc:  # a later step's socket was deleted while the workflow ran
            self._fail_flow(flow, {**outcome, "error": C.error_dict("SocketRemoved", exc.message)}, out)
            return
        except (InvalidName, protocol.ProtocolError) as exc:
            self._fail_flow(flow, {**outcome, "error": C.error_dict("WorkflowError", str(exc))}, out)
            return
        flow["events"].append(["step", time.time(), f"Step {path} ({outcome['socket']}) done; "
                                                    f"{len(flow['done'])} step(s) done"])
        if "version" in flow:
            flow["version"] = int(flow.get("version") or 0) + 1
        out.records.append(flow)

    @staticmethod
    def _fail_flow(flow: dict[str, Any], step: dict[str, Any], out: Derived) -> None:
        error = dict(step.get("error") or C.error_dict("Error", "step failed"))
        error.update(call_id=step["id"], step=str(step.get("step")), socket=step["socket"])
        message = str(error.get("message", ""))
        error["message"] = f"step {step.get('step')} ({step['socket']}, call {step['id']}) failed: {message}"
        ended = _copy(flow)
        C.mark_failed(ended, error)
        out.finals.append(ended)

    def status(self) -> dict[str, Any]:
        flows = sum(1 for r in self.node.active.values() if C.kind_of(r) == C.FLOW)
        waiting = sum(1 for r in self.node.active.values() if r.get("state") == C.WAITING)
        return {"plug_calls": self.fired, "joins_completed": self.joined, "workflows_started": self.flows,
                "workflows_running": flows, "joins_waiting": waiting}


def _copy(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of a record that can be changed without touching the one in memory."""
    return {**record, "events": list(record["events"]), "done": dict(record.get("done") or {})}
