"""Admin requests (``ecctl add|ls|delete|status``): validation, the database work off the loop,
and the merge of stored topology with what runs on this node.

Changes are answered only once the node has loaded the new topology, so a client that adds a
socket and calls it right away never sees "unknown socket".
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import protocol

from . import calls as C
from .errors import EcdError, InvalidName, NotFound, StillReferenced

if TYPE_CHECKING:
    from .node import Node
    from .server import Peer

logger = logging.getLogger(__name__)

#: Most calls one ``ls_calls`` page may hold.
MAX_PAGE_ROWS = 1000

_MUTATIONS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "add_queue": lambda store, a: store.add_queue(**a),
    "add_processor": lambda store, a: store.add_processor(**a),
    "add_socket": lambda store, a: store.add_socket(**a),
    "update_processor": lambda store, a: store.update_processor(**a),
    "delete_queue": lambda store, a: store.delete("queue", _name(a)),
    "delete_processor": lambda store, a: store.delete("processor", _name(a)),
    "delete_socket": lambda store, a: store.delete("socket", _name(a)),
}
_LISTINGS = {"ls_queues": "queue", "ls_processors": "processor", "ls_sockets": "socket", "ls_nodes": "node"}


def _name(args: dict[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidName("a name is required (-n NAME)")
    return name


class AdminHandler:
    """Answers ADMIN requests for a node."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def handle(self, peer: "Peer", msg: protocol.Admin) -> None:
        op, args = msg.op, dict(msg.args)
        if op in _MUTATIONS:
            self._mutate(peer, msg.request_id, op, args)
        elif op in _LISTINGS:
            self._list(peer, msg.request_id, _LISTINGS[op])
        elif op == "status":
            self._reply(peer, msg.request_id, self.node.status())
        elif op == "ls_calls":
            self._reply(peer, msg.request_id, self.ls_calls(args))
        elif op == "ls_call":
            self._reply(peer, msg.request_id, self.ls_call(args))
        else:
            raise NotFound(f"unknown admin op '{op}'")

    def _reply(self, peer: "Peer", request_id: bytes, data: Any) -> None:
        self.node.frontend.send(peer, protocol.Reply(data=data, request_id=request_id))

    def _fail(self, peer: "Peer", request_id: bytes, error: BaseException) -> None:
        if isinstance(error, EcdError):
            code, reason = error.code, error.message
        elif isinstance(error, TypeError):
            code, reason = protocol.E_INVALID, f"bad arguments: {error}"
        else:
            logger.error("admin request failed: %r", error)
            code, reason = protocol.E_INTERNAL, "internal error (see the ecd log)"
        self.node.frontend.send(peer, protocol.Error(code=code, reason=reason, detail={}, request_id=request_id))

    # -- topology changes -----------------------------------------------------------------------

    def _mutate(self, peer: "Peer", request_id: bytes, op: str, args: dict[str, Any]) -> None:
        node = self.node
        store = node.store
        if op == "delete_socket":
            name = _name(args)
            unfinished = sum(1 for record in node.active.values() if record.get("socket") == name)
            if unfinished:
                raise StillReferenced(
                    f"socket '{name}' has {unfinished} unfinished call(s); delete it once they are done")

        def work() -> tuple[Any, Any]:
            result = _MUTATIONS[op](store, args)
            return result, store.snapshot()

        def done(outcome: Any, error: BaseException | None) -> None:
            if error is not None:
                self._fail(peer, request_id, error)
                return
            result, snapshot = outcome
            if snapshot.version >= node.topology.version:
                node.topology = snapshot
                node._reconcile()
            logger.info("admin %s %s", op, args.get("name", ""))
            self._reply(peer, request_id, self._decorate(op.split("_", 1)[1], result))

        node.bg_db.submit(work, done)

    def _list(self, peer: "Peer", request_id: bytes, kind: str) -> None:
        def done(rows: Any, error: BaseException | None) -> None:
            if error is not None:
                self._fail(peer, request_id, error)
                return
            self._reply(peer, request_id, [self._decorate(kind, row) for row in rows])

        self.node.bg_db.submit(lambda: self.node.store.list(kind), done)

    def _decorate(self, kind: str, row: Any) -> Any:
        """Add what only the running node knows (status, depths) to a stored object."""
        if not isinstance(row, dict):
            return row
        node = self.node
        if kind == "processor":
            runtime = node.runtimes.get(row.get("name", ""))
            if runtime is not None:
                view = runtime.view()
                row = {**row, **{k: view[k] for k in ("status", "reason", "resolved_commit", "workers", "busy", "idle")}}
            else:
                row = {**row, "status": "stopped", "reason": "", "resolved_commit": None, "workers": 0, "busy": 0, "idle": 0}
        elif kind == "socket":
            row = {**row, "depth": node.scheduler.depth(row.get("name", ""))}
        elif kind == "queue":
            depth = sum(
                node.scheduler.depth(s.name) for s in node.topology.sockets.values() if s.queue == row.get("name")
            )
            row = {**row, "depth": depth}
        return row

    # -- calls ----------------------------------------------------------------------------------

    def ls_calls(self, args: dict[str, Any]) -> dict[str, Any]:
        limit = _int_arg(args, "limit", 50, 1, MAX_PAGE_ROWS)
        offset = _int_arg(args, "offset", 0, 0, 1 << 62)
        unfinished = bool(args.get("unfinished", False))
        total, records = self.node.wal.recent(limit, offset, unfinished)
        rows = []
        for record in records:
            fresh = self.node.active.get(record["id"], record)
            rows.append(C.summary_view(fresh))
        return {"total": total, "offset": offset, "limit": limit, "calls": rows}

    def ls_call(self, args: dict[str, Any]) -> dict[str, Any]:
        call_id = args.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidName("a call id is required (--id ID)")
        record = self.node.active.get(call_id) or self.node.wal.get(call_id)
        if record is None:
            raise NotFound(f"unknown call id '{call_id}'")
        view = C.public_view(record)
        if args.get("result") and record.get("state") == C.DONE and record.get("result") is not None:
            view["result"] = protocol.unpack(record["result"])
        return view


def _int_arg(args: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidName(f"{name} must be an integer between {lo} and {hi}")
    return value
