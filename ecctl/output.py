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

__all__ = ["change_line", "fmt_duration", "fmt_error", "fmt_percent", "fmt_time", "fmt_value",
           "page_footer", "table", "to_json", "to_jsonable"]


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


def fmt_percent(value: Any) -> str:
    """A percentage (0-100) rounded to a whole number: ``12%``; ``-`` for None or no number."""
    if value is None or isinstance(value, bool):
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(number):
        return "-"
    return f"{round(number)}%"


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


def page_footer(page: int, rows: int, total: int, pages: int | None = None) -> str:
    """``Page X of N of T total records`` (seed wording); ``pages`` from ``total / rows`` if None."""
    if pages is None:
        pages = max(1, math.ceil(total / rows)) if rows > 0 else 1
    return f"Page {page} of {pages} of {total} total records"


#: Longest text :func:`fmt_value` prints before cutting it short.
MAX_VALUE_CHARS = 60
_MARKS = {"add": "+", "update": "~", "delete": "-"}


def fmt_value(value: Any) -> str:
    """A field value on one line: ``none``, ``true``, ``2``, ``main``, ``"two words"``, ``[a, b]``.

    Text is quoted (JSON style) when it is empty, has spaces or punctuation that would make the
    line ambiguous, or reads like another type; text longer than :data:`MAX_VALUE_CHARS` is cut.
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, str):
        text = value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS - 3] + "..."
        plain = (text and text.lower() not in ("none", "null", "true", "false")
                 and not any(c.isspace() or c in ',"\'[]{}' for c in text)
                 and "->" not in text and not _is_number(text))
        return text if plain else json.dumps(text, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return json.dumps(to_jsonable(value), sort_keys=True, ensure_ascii=False)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def change_line(change: dict[str, Any]) -> str:
    """One change of an ``apply`` as a diff line: ``+ queue q1``, ``- socket s9``,
    ``~ processor p1: concurrency 1 -> 2, retries 0 -> 3``."""
    action = change.get("action")
    line = f"{_MARKS.get(str(action), '?')} {change.get('kind')} {change.get('name')}"
    fields = change.get("fields") or {}
    if action == "update" and isinstance(fields, dict) and fields:
        parts = []
        for key, diff in fields.items():
            if isinstance(diff, (list, tuple)) and len(diff) == 2:
                parts.append(f"{key} {fmt_value(diff[0])} -> {fmt_value(diff[1])}")
            else:
                parts.append(f"{key} {fmt_value(diff)}")
        line += ": " + ", ".join(parts)
    return line


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
