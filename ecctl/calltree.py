"""Drawing provenance: ``ecctl ls call --tree`` (the calls a call led to), ``--graph`` (the whole
run, level by level) and ``--flow`` (every call of the run, as a table).

The daemon answers ``ls_call`` with ``tree``/``graph``/``flow`` as ``{"id", "view", "root",
"calls": [summary...], "edges": [[parent, child]...], "missing": [...]}``; this module only
draws that. Calls reached twice (a join fed by two calls, the step after a parallel) are drawn
once, and where they come back they are named with ``(see above)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from . import output

__all__ = ["render", "render_flow", "render_graph", "render_tree"]


def _label(call: dict[str, Any], with_result: bool) -> str:
    name = call.get("socket") or "?"
    via = call.get("via")
    parts = [name, f"[{call.get('state')}]", str(call.get("id"))]
    if via:
        parts.append(f"({via})")
    if with_result and "result" in call:
        value = call["result"]
        parts.append("= " + (value if isinstance(value, str) else json.dumps(output.to_jsonable(value))))
    elif call.get("state") == "failed" and call.get("error"):
        parts.append("! " + output.fmt_error(call.get("error")))
    return "  ".join(parts)


def _children(answer: dict[str, Any]) -> dict[str, list[str]]:
    known = {call["id"] for call in answer.get("calls") or ()}
    out: dict[str, list[str]] = {}
    for parent, child in answer.get("edges") or ():
        if child in known and child not in out.setdefault(parent, []):
            out[parent].append(child)
    return out


def render_tree(answer: dict[str, Any], with_result: bool = False) -> str:
    """The calls the asked call led to, as an indented tree."""
    calls = {call["id"]: call for call in answer.get("calls") or ()}
    children = _children(answer)
    start = answer.get("id")
    if start not in calls:
        return f"call {start} not found"
    lines = [_label(calls[start], with_result)]
    drawn = {start}

    def walk(call_id: str, prefix: str) -> None:
        kids = children.get(call_id, [])
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            branch, more = ("└── ", "    ") if last else ("├── ", "│   ")
            if kid in drawn:
                lines.append(f"{prefix}{branch}{calls[kid].get('socket')}  {kid}  (see above)")
                continue
            drawn.add(kid)
            lines.append(prefix + branch + _label(calls[kid], with_result))
            walk(kid, prefix + more)

    walk(start, "")
    return "\n".join(lines + _footer(answer))


def _levels(answer: dict[str, Any]) -> list[list[str]]:
    """Calls by level: a call sits one level below the lowest of its parents."""
    calls = {call["id"] for call in answer.get("calls") or ()}
    children = _children(answer)
    parents: dict[str, list[str]] = {}
    for parent, kids in children.items():
        for kid in kids:
            parents.setdefault(kid, []).append(parent)
    level: dict[str, int] = {}
    roots = [c for c in calls if not any(p in calls for p in parents.get(c, ()))]
    order = sorted(roots, key=lambda c: (c != answer.get("root"), c))
    for root in order:
        level[root] = 0
    changed = True
    rounds = 0
    while changed and rounds <= len(calls):  # longest path; bounded (no cycles by construction)
        changed = False
        rounds += 1
        for parent, kids in children.items():
            if parent not in level:
                continue
            for kid in kids:
                if level.get(kid, -1) < level[parent] + 1:
                    level[kid] = level[parent] + 1
                    changed = True
    depth = max(level.values(), default=-1)
    rows: list[list[str]] = [[] for _ in range(depth + 1)]
    for call_id in _ordered(calls, children, order):
        if call_id in level:
            rows[level[call_id]].append(call_id)
    return rows


def _ordered(calls: Iterable[str], children: dict[str, list[str]], roots: list[str]) -> list[str]:
    """Calls depth first from the roots, so siblings stay together in each level."""
    seen: list[str] = []
    marked: set[str] = set()
    stack = list(reversed(roots))
    while stack:
        call_id = stack.pop()
        if call_id in marked:
            continue
        marked.add(call_id)
        seen.append(call_id)
        stack.extend(reversed(children.get(call_id, [])))
    return seen + sorted(set(calls) - marked)


def render_graph(answer: dict[str, Any], with_result: bool = False) -> str:
    """The whole run, level by level; each call names the calls it came from (``<- #n``)."""
    calls = {call["id"]: call for call in answer.get("calls") or ()}
    children = _children(answer)
    rows = _levels(answer)
    number: dict[str, int] = {}
    for row in rows:
        for call_id in row:
            number[call_id] = len(number) + 1
    parents: dict[str, list[str]] = {}
    for parent, kids in children.items():
        for kid in kids:
            parents.setdefault(kid, []).append(parent)
    lines: list[str] = []
    for depth, row in enumerate(rows):
        for i, call_id in enumerate(row):
            head = f"{depth:>3}  " if i == 0 else "     "
            mark = "*" if call_id == answer.get("id") else " "
            came = sorted(number[p] for p in parents.get(call_id, ()) if p in number)
            source = f"  <- {', '.join(f'#{n}' for n in came)}" if came else ""
            lines.append(f"{head}{mark}#{number[call_id]:<3} {_label(calls[call_id], with_result)}{source}")
        if depth + 1 < len(rows):
            lines.append("       │")
    header = f"run {answer.get('root')}: {len(calls)} call(s) in {len(rows)} level(s); * = call {answer.get('id')}"
    return "\n".join([header, *lines, *_footer(answer)])


def render_flow(answer: dict[str, Any], with_result: bool = False) -> str:
    """Every call of the run, in the order they were made."""
    calls = sorted(answer.get("calls") or (), key=lambda c: (c.get("created") or 0.0, c.get("id")))
    headers = ["ID", "Socket", "Via", "State", "Parent", "Node", "Created", "Finished"]
    rows = [[c.get("id"), c.get("socket"), c.get("via"), c.get("state"), c.get("parent"), c.get("node"),
             output.fmt_time(c.get("created")), output.fmt_time(c.get("finished"))] for c in calls]
    if with_result:
        headers.append("Result")
        for row, call in zip(rows, calls):
            value = call.get("result")
            row.append(value if isinstance(value, str) or value is None
                       else json.dumps(output.to_jsonable(value)))
    return "\n".join([output.table(headers, rows), f"{len(calls)} call(s) in run {answer.get('root')}",
                      *_footer(answer)])


def _footer(answer: dict[str, Any]) -> list[str]:
    lines = []
    if answer.get("missing"):
        lines.append(f"not found on this node or in the call history: {', '.join(answer['missing'])}")
    if answer.get("truncated"):
        lines.append("(cut short: the run has more calls than one answer holds)")
    return lines


def render(answer: dict[str, Any], with_result: bool = False) -> str:
    view = answer.get("view")
    if view == "tree":
        return render_tree(answer, with_result)
    if view == "graph":
        return render_graph(answer, with_result)
    return render_flow(answer, with_result)
