"""Admin requests (``ecctl add|ls|update|delete|proc|apply|export|status``): the database work
off the loop, and the merge of stored topology with what runs on this node.

Changes are answered only once the node has loaded the new topology (it reads just the changed
objects), so a client that adds a socket and calls it right away never sees "unknown socket".
When the database is unreachable every admin request fails with 503 "topology store
unavailable: ..." while calls keep being served on the cached topology.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import protocol

from . import calls as C
from .access import can_see_call, change_right
from .errors import EcdError, Forbidden, InvalidName, NotFound, StillReferenced, StoreUnavailable
from .provenance import MAX_CALLS, VIEWS, merge_history

if TYPE_CHECKING:
    from .node import Node
    from .server import Peer

logger = logging.getLogger(__name__)

#: Most calls one ``ls_calls`` page may hold.
MAX_PAGE_ROWS = 1000
#: Newest log records a ``ls calls --socket`` looks through when it falls back to the local log
#: (the database is away): the loop must not walk a whole log.
LOCAL_SCAN = 10_000

#: Kinds of topology objects, and the plural used by ``ls_<kinds>``.
KINDS = {"queue": "queues", "node": "nodes", "processor": "processors", "socket": "sockets",
         "plug": "plugs", "deployment": "deployments", "flow": "flows"}
_LISTINGS = {plural: kind for kind, plural in KINDS.items()}
#: ``proc_<action>`` -> the processor fields it sets.
_PROC_FIELDS: dict[str, dict[str, Any]] = {
    "pause": {"paused": True}, "resume": {"paused": False},
    "stop": {"enabled": False}, "start": {"enabled": True},
}


Mutation = Callable[[Any, dict[str, Any]], Any]


def _mutation(op: str, args: dict[str, Any], allowed: Callable[..., None]) -> Mutation | None:
    """The store call an admin op makes (given the store and the audit row written with it), or
    None when ``op`` is not a topology change. ``allowed`` refuses the changes of an ``apply`` the
    caller has no right to make."""
    action, _, kind = op.partition("_")
    if kind in KINDS and action == "add":
        return lambda store, audit: store.add(kind, audit=audit, **args)
    if kind in KINDS and action == "update":
        fields = {k: v for k, v in args.items() if k != "name"}
        return lambda store, audit: store.update(kind, _name(args), audit=audit, **fields)
    if kind in KINDS and action == "delete":
        return lambda store, audit: store.delete(kind, _name(args), audit=audit)
    if action == "proc" and kind in _PROC_FIELDS:
        return lambda store, audit: store.update("processor", _name(args), audit=audit, **_PROC_FIELDS[kind])
    if op == "proc_restart":
        return lambda store, audit: store.restart_processor(_name(args), audit=audit)
    if op == "proc_remove":
        return lambda store, audit: store.remove_processor(_name(args), audit=audit)
    if op == "apply":
        spec = args.get("spec")
        if not isinstance(spec, dict):
            raise InvalidName("apply needs a spec: a map of queues, processors, sockets, ...")
        allowed([{"action": action, "kind": kind, "name": "(any)"} for kind in _spec_kinds(spec)
                 for action in ("add", "update", "delete") if action != "delete" or args.get("prune")], coarse=True)
        return lambda store, audit: store.apply(spec, dry_run=bool(args.get("dry_run")), prune=bool(args.get("prune")),
                                                allowed=allowed, audit=audit)
    return None


def _spec_kinds(spec: dict[str, Any]) -> list[str]:
    """The kinds whose sections a spec names (its unknown sections are refused later)."""
    from .netspec import SECTIONS

    return [SECTIONS[section] for section in spec if section in SECTIONS]


def _audit_object(op: str, args: dict[str, Any]) -> str:
    if op == "apply":
        spec = args.get("spec") if isinstance(args.get("spec"), dict) else {}
        return ("dry run " if args.get("dry_run") else "") + ", ".join(f"{k}: {len(v or ())}" for k, v in spec.items()
                                                                       if isinstance(v, (list, dict)))[:280]
    action, _, kind = op.partition("_")
    name = args.get("name") if isinstance(args.get("name"), str) else ""
    return f"{'processor' if action == 'proc' else kind} {name}".strip()


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
        if self.node.access_admin.handles(op):
            self.node.access_admin.handle(peer, msg)
            return
        self._fields_allowed(peer, op, args)
        mutation = _mutation(op, args, lambda changes, coarse=False: self._allowed(peer, changes, coarse))
        if mutation is not None:
            self._mutate(peer, msg.request_id, op, args, mutation)
        elif op.startswith("ls_") and op[3:] in _LISTINGS:
            self._list(peer, msg.request_id, _LISTINGS[op[3:]])
        elif op == "export":
            self._read(peer, msg.request_id, lambda store: store.export())
        elif op == "status":
            self._reply(peer, msg.request_id, self.node.status())
        elif op in ("node_drain", "node_undrain"):
            self._reply(peer, msg.request_id, self.node.set_drain(_name(args), op == "node_drain"))
        elif op == "ls_calls":
            self.ls_calls(peer, msg.request_id, args)
        elif op == "ls_call":
            self.ls_call(peer, msg.request_id, args)
        else:
            raise NotFound(f"unknown admin op '{op}'")

    def _fields_allowed(self, peer: "Peer", op: str, args: dict[str, Any]) -> None:
        """Rights some fields need besides the op's own: a node's key (admitting a mesh member,
        which holds copies of everyone's calls) needs ALL; without UPDATE_PROCESSOR, each field of
        a processor needs the right that names it (EDIT_PROCESSOR_CODE for its code, ...)."""
        needed = field_rights(op.partition("_")[2], args) if op in ("add_node", "update_node", "update_processor") else []
        for rights, field in needed:
            self.node.guard.require(peer.principal, rights, f"admin:{op}", f"{op.partition('_')[2]} {args.get('name')}",
                                    f" (to set {field})")

    def _allowed(self, peer: "Peer", changes: list[dict[str, Any]], coarse: bool = False) -> None:
        """An ``apply`` needs the right of every change it makes, and of the fields it sets (runs
        in its transaction, on the database thread: reads only the immutable principal). First,
        before anything is read (``coarse``): the rights to add or update, and with ``prune``
        delete, every kind the spec names, so that its errors tell nothing to someone who could
        not make those changes anyway."""
        principal = peer.principal
        if coarse:
            for kind in sorted({change["kind"] for change in changes}):
                add, update, delete = (change_right({"action": a, "kind": kind}) for a in ("add", "update", "delete"))
                missing = ""
                if not principal.has_any(add) and not principal.has_any(update):
                    missing = add[0]
                elif any(c["kind"] == kind and c["action"] == "delete" for c in changes) and not principal.has_any(delete):
                    missing = delete[0]
                if missing:
                    raise Forbidden(f"permission denied: {principal.label} lacks {missing} (to apply {kind}s)", missing)
            return
        for change in changes:
            right, generic = change_right(change)
            needed = [((right, generic), "")]
            if change.get("action") != "delete":
                fields = {k: v[1] for k, v in (change.get("fields") or {}).items()}
                needed += field_rights(str(change.get("kind")), fields) if change.get("kind") == "node" else []
            for rights, field in needed:
                if not principal.has_any(rights):
                    raise Forbidden(f"permission denied: {principal.label} lacks {rights[0]} (to "
                                    f"{change.get('action')} {change.get('kind')} {change.get('name')}"
                                    f"{' ' + field if field else ''})", rights[0])

    def _reply(self, peer: "Peer", request_id: bytes, data: Any) -> None:
        self.node.frontend.send(peer, protocol.Reply(data=data, request_id=request_id))

    def _fail(self, peer: "Peer", request_id: bytes, error: BaseException) -> None:
        self.node.frontend.send(peer, failure(error, request_id))

    # -- topology changes -----------------------------------------------------------------------

    def _mutate(self, peer: "Peer", request_id: bytes, op: str, args: dict[str, Any],
                mutation: Callable[[Any], Any]) -> None:
        node = self.node
        store = node.store
        if op in ("delete_socket", "proc_remove"):
            self._refuse_unfinished(op, _name(args))
        base, epoch = node.topology.version, node.topology.epoch
        principal = peer.principal
        audit = node.audit.row(user=principal.label, key=principal.key, op=op, object=_audit_object(op, args))

        def work() -> tuple[Any, Any]:
            result = mutation(store, audit)
            return result, store.changes_since(base, epoch)

        def done(outcome: Any, error: BaseException | None) -> None:
            if error is not None:
                node.sync.note_error(error)
                if isinstance(error, Forbidden):
                    node.guard.deny(principal, f"admin:{op}", audit["object"], error)
                elif isinstance(error, EcdError) and not isinstance(error, StoreUnavailable):
                    node.audit.record(user=principal.label, key=principal.key, op=op, object=audit["object"],
                                      outcome=f"error ({error.code}): {error.message}")
                self._fail(peer, request_id, error)
                return
            result, delta = outcome
            logger.info("admin %s %s by %s", op, args.get("name", ""), principal.label)
            # answer once this node runs on the new topology: a client that adds a socket and
            # calls it at once never sees "unknown socket"
            node.sync.catch_up(delta, base, lambda: self._reply(peer, request_id, self._result(op, result)))

        node.bg_db.submit(work, done)

    def _result(self, op: str, result: Any) -> Any:
        action, _, kind = op.partition("_")
        if action == "proc" and isinstance(result, dict) and "gitrepo" in result:
            return self._decorate("processor", result)
        if kind in KINDS:
            return self._decorate(kind, result)
        return result

    def _refuse_unfinished(self, op: str, name: str) -> None:
        node = self.node
        if op == "delete_socket":
            sockets = {name}
        else:
            sockets = {s.name for s in node.topology.sockets.values() if s.processor == name}
        unfinished = sum(1 for record in node.active.values() if record.get("socket") in sockets)
        if unfinished:
            what = f"socket '{name}'" if op == "delete_socket" else f"processor '{name}'"
            raise StillReferenced(f"{what} has {unfinished} unfinished call(s); remove it once they are done")

    def _read(self, peer: "Peer", request_id: bytes, read: Callable[[Any], Any],
              decorate: Callable[[Any], Any] = lambda data: data) -> None:
        def done(data: Any, error: BaseException | None) -> None:
            if error is not None:
                self.node.sync.note_error(error)
                self._fail(peer, request_id, error)
                return
            self._reply(peer, request_id, decorate(data))

        store = self.node.store
        self.node.bg_db.submit(lambda: read(store), done)

    def _list(self, peer: "Peer", request_id: bytes, kind: str) -> None:
        def decorate(rows: list[Any]) -> list[Any]:
            out = [self._decorate(kind, row) for row in rows]
            if kind == "node":  # mesh members not (yet) registered in the topology too
                named = {row.get("name") for row in out if isinstance(row, dict)}
                out += [view for view in self.node.mesh_views() if view["name"] not in named]
            return out

        self._read(peer, request_id, lambda store: store.list(kind), decorate)

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
        elif kind == "node":
            row = {**row, **node.node_view(row.get("name", ""))}
        elif kind == "queue":
            depth = sum(
                node.scheduler.depth(s.name) for s in node.topology.sockets.values() if s.queue == row.get("name")
            )
            row = {**row, "depth": depth}
        return row

    # -- calls ----------------------------------------------------------------------------------

    def ls_calls(self, peer: "Peer", request_id: bytes, args: dict[str, Any]) -> None:
        """A page of calls, newest first: from the database's call history (every node, across
        restarts) when it is exported, else (or while the database is away) from this node's log."""
        rows = _int_arg(args, "rows", _int_arg(args, "limit", 10, 1, MAX_PAGE_ROWS), 1, MAX_PAGE_ROWS)
        if "page" in args:
            page = _int_arg(args, "page", 1, 1, 1 << 40)
        else:
            page = _int_arg(args, "offset", 0, 0, 1 << 62) // rows + 1
        unfinished = bool(args.get("unfinished", False))
        socket = args.get("socket")
        if socket is not None and (not isinstance(socket, str) or not socket):
            raise InvalidName("socket must be a socket name")
        user = args.get("user")
        if user is not None and (not isinstance(user, str) or not user):
            raise InvalidName("user must be a user name")
        if not peer.principal.has("READ"):
            user = peer.principal.label  # without READ, one's own calls only
        history = self.node.history
        if history is None:
            self._reply(peer, request_id, self._local_calls(page, rows, unfinished, socket, user))
            return

        def done(data: Any, error: BaseException | None) -> None:
            if error is not None:
                self.node.sync.note_error(error)
                if not isinstance(error, StoreUnavailable):
                    self._fail(peer, request_id, error)
                    return
                data = self._local_calls(page, rows, unfinished, socket, user)
            else:
                data = {**data, "source": "history"}
            self._reply(peer, request_id, data)

        history.then(lambda: history.history.page(page, rows, unfinished=unfinished, socket=socket, user=user), done)

    def _local_calls(self, page: int, rows: int, unfinished: bool, socket: str | None,
                     user: str | None = None) -> dict[str, Any]:
        offset = (page - 1) * rows
        if socket is None and user is None:
            total, records = self.node.wal.recent(rows, offset, unfinished)
        else:  # filtered walk of the newest part of the local log (the history is the fast path)
            matching = [r for r in self.node.wal.recent(LOCAL_SCAN, 0, unfinished)[1]
                        if (socket is None or r.get("socket") == socket) and (user is None or r.get("user") == user)]
            total, records = len(matching), matching[offset:offset + rows]
        calls = [C.summary_view(self.node.active.get(record["id"], record)) for record in records]
        return {"total": total, "page": page, "pages": max(1, -(-total // rows)), "rows": rows,
                "offset": offset, "limit": rows, "calls": calls, "source": "local"}

    def ls_call(self, peer: "Peer", request_id: bytes, args: dict[str, Any]) -> None:
        call_id = args.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidName("a call id is required (--id ID)")
        views = [view for view in VIEWS if args.get(view)]
        if len(views) > 1:
            raise InvalidName("give one of tree, graph and flow")
        record = self.node.active.get(call_id) or self.node.wal.get(call_id)
        if record is not None and not can_see_call(peer.principal, record):
            raise NotFound(f"unknown call id '{call_id}'")  # another user's call is not there for it
        if views:
            self._provenance(peer, request_id, call_id, record, views[0], bool(args.get("result")))
            return
        if record is not None:
            view = C.public_view(record)
            if args.get("result") and record.get("state") == C.DONE and record.get("result") is not None:
                try:
                    view["result"] = protocol.unpack(record["result"])
                except protocol.ProtocolError as exc:  # not a plain value (a worker's ext type)
                    view["result"] = None
                    view["result_error"] = str(exc)
            self._reply(peer, request_id, view)
            return
        history = self.node.history
        if history is None:
            raise NotFound(f"unknown call id '{call_id}'")

        def done(found: Any, error: BaseException | None) -> None:
            if error is None and (found is None or not can_see_call(peer.principal, found)):
                error = NotFound(f"unknown call id '{call_id}'")
            if error is not None:
                self._fail(peer, request_id, error)
                return
            self._reply(peer, request_id, C.public_view(found))  # swept from the log: no result here

        history.then(lambda: history.history.get(call_id), done)


    def _provenance(self, peer: "Peer", request_id: bytes, call_id: str, record: dict[str, Any] | None,
                    view: str, with_result: bool) -> None:
        """``ls call --tree|--graph|--flow``: from this node's records, completed from the call
        history when some of the run's calls are not held here."""
        history = self.node.history
        answer = None
        if record is not None:
            answer = self.node.provenance.collect(record, view, with_result)
            if not answer["missing"] or history is None:
                self._reply(peer, request_id, answer)
                return
        elif history is None:
            raise NotFound(f"unknown call id '{call_id}'")

        def work() -> tuple[Any, list[dict[str, Any]]]:
            start = record or history.history.get(call_id)
            if start is None:
                return None, []
            return start, history.history.run(start.get("root") or start["id"], MAX_CALLS)

        def done(found: Any, error: BaseException | None) -> None:
            if error is None and (found[0] is None or not can_see_call(peer.principal, found[0])):
                error = NotFound(f"unknown call id '{call_id}'")
            if error is not None:
                if answer is not None and isinstance(error, StoreUnavailable):
                    self._reply(peer, request_id, answer)  # what this node holds is the best there is
                else:
                    self._fail(peer, request_id, error)
                return
            start, rows = found
            base = answer or {"id": call_id, "view": view, "root": start.get("root") or call_id, "calls": [],
                              "edges": [], "missing": [], "truncated": False}
            self._reply(peer, request_id, merge_history(base, rows, with_result))

        history.then(work, done)


#: Processor fields that are its code (EDIT_PROCESSOR_CODE), and those that start, stop or pause it.
_CODE_FIELDS = frozenset({"gitrepo", "module", "branch", "commit", "tag", "requirements"})


def field_rights(kind: str, fields: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """``[(rights, field)]``: what setting ``fields`` of a ``kind`` object needs beyond the op's
    own rule (any one of ``rights``; ALL always does)."""
    needed: list[tuple[tuple[str, ...], str]] = []
    if kind == "node" and fields.get("key"):
        needed.append((("ALL",), "its key"))
    if kind == "processor":
        for field, value in fields.items():
            if field in _CODE_FIELDS:
                rights: tuple[str, ...] = ("EDIT_PROCESSOR_CODE", "UPDATE_PROCESSOR", "UPDATE")
            elif field == "paused":
                rights = ("PAUSE_PROCESSOR" if value else "RESUME_PROCESSOR", "UPDATE_PROCESSOR", "UPDATE")
            elif field == "enabled":
                rights = ("START_PROCESSOR" if value else "STOP_PROCESSOR", "UPDATE_PROCESSOR", "UPDATE")
            elif field in ("name",):
                continue
            else:
                rights = ("EDIT_PROCESSOR_CONFIG", "UPDATE_PROCESSOR", "UPDATE")
            needed.append((rights, field))
    return needed


def failure(error: BaseException, request_id: bytes) -> protocol.Error:
    """The ERROR answering an admin request that failed with ``error`` (a bug is logged and
    answered 500 without details)."""
    if isinstance(error, EcdError):
        code, reason = error.code, error.message
    elif isinstance(error, TypeError):
        code, reason = protocol.E_INVALID, f"bad arguments: {error}"
    else:
        logger.error("admin request failed: %r", error)
        code, reason = protocol.E_INTERNAL, "internal error (see the ecd log)"
    return protocol.Error(code=code, reason=reason, detail={}, request_id=request_id)


def _int_arg(args: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidName(f"{name} must be an integer between {lo} and {hi}")
    return value
