"""A history checker for the durability promise (see shared RELIABILITY.md).

The client side logs, per call id, what it saw: ``invoke`` (a CALL was sent), ``ok`` (ACCEPTED
came back: the call is acknowledged) or ``fail``/``timeout`` (ambiguous). The daemon side gives,
per call id, every execution (prerun events) and the result delivered. The checker then reports

- lost:       acknowledged ids that never completed (must be empty),
- unattempted: completed ids that never ran (must be empty),
- divergent:  ids whose result changed between two reads (duplicate results; must be empty),
- wrong:      ids whose result is not the expected value (must be empty),
- duplicate executions (allowed: execution is at-least-once; reported for information).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


#: Expected result of a call whose value is not known in advance (only its consistency is checked).
ANY = object()


@dataclass
class History:
    """Thread-safe client-side log of call outcomes."""

    invoked: dict[str, Any] = field(default_factory=dict)  # id -> expected result
    acked: set[str] = field(default_factory=set)
    ambiguous: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def invoke(self, call_id: str, expected: Any) -> None:
        with self._lock:
            self.invoked[call_id] = expected

    def ok(self, call_id: str) -> None:
        with self._lock:
            self.acked.add(call_id)
            self.ambiguous.discard(call_id)

    def fail(self, call_id: str) -> None:
        with self._lock:
            if call_id not in self.acked:
                self.ambiguous.add(call_id)


@dataclass
class Verdict:
    lost: set[str]
    unattempted: set[str]
    divergent: set[str]
    wrong: set[str]
    duplicate_executions: dict[str, int]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unattempted or self.divergent or self.wrong)

    def __str__(self) -> str:
        return (f"lost={len(self.lost)} unattempted={len(self.unattempted)} divergent={len(self.divergent)} "
                f"wrong={len(self.wrong)} duplicate_executions={len(self.duplicate_executions)}"
                + (f" e.g. lost {sorted(self.lost)[:3]}" if self.lost else "")
                + (f" e.g. wrong {sorted(self.wrong)[:3]}" if self.wrong else ""))


def check(history: History, completed: dict[str, Any], executions: dict[str, int],
          reread: dict[str, Any] | None = None) -> Verdict:
    """Compare the client's history with what the daemon reports.

    ``completed`` maps id -> result for every call the daemon finished; ``executions`` maps id ->
    number of times it ran; ``reread`` is a second, later read of the results (if taken).
    """
    lost = {cid for cid in history.acked if cid not in completed}
    unattempted = {cid for cid in completed if executions.get(cid, 0) < 1}
    divergent = {cid for cid, value in (reread or {}).items() if cid in completed and completed[cid] != value}
    wrong = {cid for cid, value in completed.items()
             if cid in history.invoked and history.invoked[cid] is not ANY and history.invoked[cid] != value}
    duplicates = {cid: n for cid, n in executions.items() if n > 1}
    return Verdict(lost, unattempted, divergent, wrong, duplicates)
