"""Where calls came from and what they led to: the call tree, the run's graph, every call of a
run (``ecctl ls call --tree|--graph|--flow``).

Every record names its ``parent`` and ``root`` and, once it ended, its ``children`` (the calls
its end made or fed: plug calls, joins, next workflow steps). :meth:`Provenance.collect` walks
``children`` from a call (``tree``) or from its run's root (``graph``, ``flow``) through the
records this node holds (its own, and the copies it keeps for others: a run's records are kept
together); calls it does not hold are looked up in the call history by root, if there is one.
The walk is bounded (:data:`MAX_CALLS`) so one huge run cannot stall the loop.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import protocol

from . import calls as C

if TYPE_CHECKING:
    from .node import Node

#: Most calls one provenance answer holds.
MAX_CALLS = 5000
VIEWS = ("tree", "graph", "flow")


def _entry(record: dict[str, Any], with_result: bool) -> dict[str, Any]:
    entry = C.summary_view(record)
    entry.update(step=record.get("step"), flow=record.get("flow"), error=record.get("error"),
                 function=record.get("function"), processor=record.get("processor"))
    if with_result and record.get("state") == C.DONE and record.get("result") is not None:
        try:
            entry["result"] = protocol.unpack(record["result"])
        except protocol.ProtocolError:
            entry["result"] = None
    return entry


class Provenance:
    """Provenance answers of one node."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def get(self, call_id: str) -> dict[str, Any] | None:
        node = self.node
        return node.finalizing.get(call_id) or node.active.get(call_id) or node.wal.get(call_id)

    def collect(self, start: dict[str, Any], view: str, with_result: bool = False) -> dict[str, Any]:
        """The calls and edges of ``view`` around the record ``start``: ``{"id", "view", "root",
        "calls": [summary...], "edges": [[parent, child]...], "missing": [id...], "truncated"}``."""
        root_id = start.get("root") or start["id"]
        origin = start if view == "tree" else (self.get(root_id) or start)
        seen: dict[str, dict[str, Any]] = {origin["id"]: origin}
        edges: list[list[str]] = []
        missing: list[str] = []
        queue = deque([origin])
        truncated = False
        while queue:
            record = queue.popleft()
            for child in record.get("children") or ():
                if not isinstance(child, str):
                    continue
                edges.append([record["id"], child])
                if child in seen or child in missing:
                    continue
                if len(seen) >= MAX_CALLS:
                    truncated = True
                    continue
                found = self.get(child)
                if found is None:
                    missing.append(child)
                    continue
                seen[child] = found
                queue.append(found)
        if view == "graph" and start["id"] not in seen:
            seen[start["id"]] = start
        return {"id": start["id"], "view": view, "root": root_id,
                "calls": [_entry(r, with_result) for r in seen.values()], "edges": edges,
                "missing": missing, "truncated": truncated}


def merge_history(answer: dict[str, Any], rows: list[dict[str, Any]], with_result: bool) -> dict[str, Any]:
    """Add the calls of the run found only in the call history (no results there) to
    ``answer``; their edges come from their ``parent``."""
    known = {entry["id"] for entry in answer["calls"]}
    edges = {tuple(edge) for edge in answer["edges"]}
    for row in rows:
        if row["id"] in known:
            continue
        known.add(row["id"])
        entry = _entry(row, False)
        if with_result:
            entry["result"] = None
        answer["calls"].append(entry)
        parent = row.get("parent")
        if parent and (parent, row["id"]) not in edges:
            answer["edges"].append([parent, row["id"]])
            edges.add((parent, row["id"]))
    answer["missing"] = [m for m in answer["missing"] if m not in known]
    if answer["view"] == "tree":  # only what descends from the call asked about
        below = {answer["id"]}
        frontier = [answer["id"]]
        children: dict[str, list[str]] = {}
        for parent, child in answer["edges"]:
            children.setdefault(parent, []).append(child)
        while frontier:
            for child in children.get(frontier.pop(), ()):
                if child not in below:
                    below.add(child)
                    frontier.append(child)
        answer["calls"] = [entry for entry in answer["calls"] if entry["id"] in below]
        answer["edges"] = [edge for edge in answer["edges"] if edge[0] in below]
    return answer
