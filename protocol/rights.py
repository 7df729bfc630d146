"""The names of rights (SPEC.md, "Users, roles and rights"): the seed's list, plus LS_, ADD_,
UPDATE_, DELETE_ and READ_ rights for every kind of object ElasticCode has.

A right is an atomic name; given to a user or a role it becomes a privilege. ``ALL`` allows
everything. Which request needs which right is the daemon's authorization table (``ecd/access.py``
and SPEC.md); this module only names them, so that clients and daemons agree on the spelling.
"""

from __future__ import annotations

from typing import Final

#: Kinds of objects that have LS_/ADD_/UPDATE_/DELETE_/READ_ rights: ElasticCode's, then the
#: seed's own (agent, scheduler) so that its spellings stay valid.
RIGHT_KINDS: Final[tuple[str, ...]] = (
    "QUEUE", "NODE", "PROCESSOR", "SOCKET", "PLUG", "DEPLOYMENT", "FLOW", "USER", "ROLE", "PRIVILEGE",
    "AGENT", "SCHEDULER",
)

#: Rights of the seed besides the per-kind families, in the seed's order.
_SEED_RIGHTS: Final[tuple[str, ...]] = (
    "ALL", "CREATE", "READ", "UPDATE", "DELETE",
    "DB_DROP", "DB_INIT",
    "START_AGENT",
    "RUN_TASK", "CANCEL_TASK",
    "START_PROCESSOR", "STOP_PROCESSOR", "PAUSE_PROCESSOR", "RESUME_PROCESSOR", "LOCK_PROCESSOR",
    "UNLOCK_PROCESSOR", "VIEW_PROCESSOR", "VIEW_PROCESSOR_CONFIG", "VIEW_PROCESSOR_CODE",
    "EDIT_PROCESSOR_CONFIG", "EDIT_PROCESSOR_CODE",
    "LS_USER", "LS_WORKERS", "READ_LOG",
)


def _family(prefix: str) -> tuple[str, ...]:
    plural = prefix == "LS_"
    return tuple(f"{prefix}{kind}{'S' if plural else ''}" for kind in RIGHT_KINDS)


#: Every right, each once: the seed's, then LS_<KINDS>, ADD_, UPDATE_, DELETE_, READ_<KIND>.
RIGHTS: Final[tuple[str, ...]] = tuple(dict.fromkeys(
    _SEED_RIGHTS + _family("LS_") + _family("ADD_") + _family("UPDATE_") + _family("DELETE_") + _family("READ_")))

#: The right that allows every request.
ALL: Final = "ALL"


def is_right(name: object) -> bool:
    """True for a known right name (exact spelling, upper case)."""
    return isinstance(name, str) and name in _RIGHT_SET


_RIGHT_SET: Final[frozenset[str]] = frozenset(RIGHTS)
