"""Who may give this node a copy of a call: the write-authority rules of the peer conversation.

Pure logic (SPEC.md, "Peer integrity"). Every record a member sends (REPLICATE, SYNCED) is
attributed to the member whose key sent it, never to what the record says, and kept only if it
passes these rules; whether it is fresher than this node's copy is decided after, as before. The
**holders** of a call are the nodes that ever held a copy of it (its owners and replicas, old and
new: ``holders`` in the record, kept by :func:`ecd.calls.set_replicas`).

* A call this node does not hold comes only from its owner.
* Anything else comes from the record's owner, or is relayed by a holder (anti-entropy after a
  restart or a partition): a member that never held a copy relays nothing.
* Within one ownership (same owner and ``term``) a finished outcome is rewritten only by the owner
  itself.
* The owner changes (a higher term) to a holder of the call (a takeover), to the peer a draining
  owner hands it to, or as the previous owner says; never to this node in its name (this node
  knows what it owns).
* A rival (another owner in the same term: a client sent one call id to two nodes) must have been
  accepted within :data:`RIVAL_WINDOW` of this node's copy; over a finished copy it is taken only
  as relayed by a holder (the replica that saw both accepts).

A holder can still lie within these rules (take over a call whose owner lives, or claim a rival
accept): members are trusted as in Raft or Kafka, and a member's key is revoked by removing its
node (SPEC.md, Known weaknesses).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["RIVAL_WINDOW", "holders", "refusal"]

#: Seconds between the accepts of two rivals at most (a client re-sends a call within its deadline).
RIVAL_WINDOW = 3600.0

_TERMINAL = ("done", "failed")


def _finished(record: Mapping[str, Any]) -> bool:
    return record.get("state") in _TERMINAL


def _term(record: Mapping[str, Any]) -> int:
    value = record.get("term")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _time(record: Mapping[str, Any]) -> float:
    value = record.get("created")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def holders(record: Mapping[str, Any]) -> set[str]:
    """Every node that ever held a copy of the call (as far as this record knows)."""
    found = {record.get("owner")}
    for key in ("replicas", "holders"):
        value = record.get(key)
        if isinstance(value, list):
            found.update(value)
    return {n for n in found if isinstance(n, str)}


def refusal(sender: str, incoming: Mapping[str, Any], current: Mapping[str, Any] | None, me: str,
            draining: Collection[str] = ()) -> str:
    """"" when the member ``sender`` may give this node (``me``) the copy ``incoming`` over its
    own copy ``current`` (None: it holds none); else why not. ``draining``: members that say they
    drain (they hand their calls to peers)."""
    owner = incoming.get("owner")
    if current is None:
        return "" if owner == sender else "a call the sender does not own"
    ours, theirs = _term(current), _term(incoming)
    if theirs < ours:
        return ""  # older than this copy: it loses on freshness anyway
    known = holders(current)
    if sender != owner and sender not in known:
        return "relayed by a member that never held a copy"
    held_owner = current.get("owner")
    if theirs == ours:
        if owner == held_owner:
            if _finished(current) and sender != owner:
                return "a finished outcome rewritten by a member that is not its owner"
            return ""
        if abs(_time(incoming) - _time(current)) > RIVAL_WINDOW:
            return "a rival accepted more than an hour apart"
        if _finished(current) and sender not in known:
            return "a rival of a finished call, not relayed by one of its holders"
        return ""
    if owner == me and held_owner == me:
        return "a takeover in this node's name that it never made"
    if owner in known or held_owner in draining or sender == held_owner:
        return ""
    return "a takeover by a member that never held a copy"
