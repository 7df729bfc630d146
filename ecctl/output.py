"""Rendering for the CLI: plain aligned text tables, local times, JSON.

Dependency-free: a table is a header row, a dashed rule and left-aligned columns separated by
two spaces. ``None`` cells render as ``-``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

__all__ = ["fmt_duration", "fmt_error", "fmt_time", "page_footer", "table", "to_json",
           "to_jsonable"]


def fmt_time(ts: float | None) -> str:
    """UNIX seconds -> local ISO time with milliseconds; ``-`` for None."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(float(ts)).isoformat(sep=" ", timespec="milliseconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def fmt_duration(seconds: float | None) -> str:
    """Seconds -> ``1d 2h 3m 4s`` (coarse); ``-`` for None."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def fmt_error(error: Any) -> str:
    """A call's error field (dict with type/message, or text) as one line; ``-`` when empty."""
    if not error:
        return "-"
    if isinstance(error, dict):
        kind, message = error.get("type"), error.get("message")
        if kind and message is not None:
            return f"{kind}: {message}"
        return str(kind or message or error)
    return str(error)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    return text.replace("\r", " ").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned text table (no trailing newline)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def page_footer(page: int, rows: int, total: int) -> str:
    """``Page X of N of T total records`` (seed wording)."""
    pages = max(1, math.ceil(total / rows)) if rows > 0 else 1
    return f"Page {page} of {pages} of {total} total records"


def to_jsonable(value: Any) -> Any:
    """Make a decoded msgpack value JSON-safe: bytes -> text, non-str keys -> str."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(to_jsonable(k)): to_jsonable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """``json.dumps(..., indent=2, sort_keys=True)`` of a JSON-safe copy of ``value``."""
    return json.dumps(to_jsonable(value), indent=2, sort_keys=True)
