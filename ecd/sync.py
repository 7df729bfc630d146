"""Keeps a node's copy of the topology in step with the database, and serves from a cached copy
when the database is away.

* PostgreSQL: a :class:`~ecd.push.ChangeListener` wakes the loop on every committed change; the
  node then reads only the changed objects (:meth:`TopologyStore.changes_since`). A slow safety
  poll runs too, and the fast poll takes over while the listener is disconnected.
* SQLite: the change counter is polled every ``topology_poll`` seconds (one indexed read when
  nothing changed).
* Every version the node adopts is also written to ``<data-dir>/topology.json``; a node that
  starts while the database is unreachable serves on that copy and catches up once it returns.

All database work runs on the node's database thread (:class:`~ecd.background.Background`); the
loop thread applies the outcome, so the topology is only ever replaced on the loop thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import typing
from pathlib import Path
from typing import Any, Callable

from .background import Background
from .errors import StoreUnavailable
from .push import ChangeListener
from .topology import Topology, TopologyStore

logger = logging.getLogger(__name__)

#: Seconds between safety polls when PostgreSQL pushes changes.
PUSH_SAFETY_POLL = 30.0
#: Seconds between warnings about an unreachable store (one line, not one per poll).
WARN_EVERY = 30.0


class TopologySync:
    """The node's topology: loaded at start, updated by push or poll, cached on disk."""

    def __init__(self, store: TopologyStore, bg: Background, cache_path: Path, poll: float,
                 on_change: Callable[[Topology], None]) -> None:
        self.store = store
        self.bg = bg
        self.cache_path = cache_path
        self.poll = max(poll, 0.05)
        self.on_change = on_change
        self.topology: Topology | None = None
        self.listener = ChangeListener(store.engine.url) if store.dialect == "postgresql" else None
        self.schema_ready = False
        self.store_ok = True
        self.last_error = ""
        self.full_loads = 0
        self.deltas = 0
        self.cached_start = False
        self._inflight = False
        self._again = False
        self._next_check = 0.0
        self._warned_at = 0.0

    # -- start / stop ---------------------------------------------------------------------------

    def load(self) -> None:
        """Blocking first load: migrate the schema and snapshot, else fall back to the cache."""
        try:
            self.store.ensure_schema()
            self.schema_ready = True
            self.topology = self.store.snapshot()
            self.full_loads += 1
            save_cache(self.cache_path, self.topology)
        except StoreUnavailable as exc:
            cached = load_cache(self.cache_path)
            if cached is None:
                raise
            self._unavailable(exc)
            self.topology = cached
            self.cached_start = True
            logger.warning("serving on the cached topology (version %d) until the store is back", cached.version)
        if self.listener is not None:
            self.listener.start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    @property
    def fds(self) -> list[int]:
        """Descriptors the loop polls for this part."""
        return [self.listener.wake_fd] if self.listener is not None else []

    # -- checks ---------------------------------------------------------------------------------

    def on_wake(self) -> None:
        """The listener saw a change (loop thread)."""
        assert self.listener is not None
        self.listener.drain()
        self.request()

    def tick(self, mono: float) -> float:
        """Start a check when one is due; returns when the next is due (monotonic)."""
        if mono >= self._next_check:
            pushed = self.listener is not None and self.listener.connected and self.store_ok
            self._next_check = mono + (PUSH_SAFETY_POLL if pushed else self.poll)
            self.request()
        return self._next_check

    def request(self) -> None:
        """Read what changed since our version (coalesced: one read in flight at a time)."""
        if self._inflight:
            self._again = True
            return
        self._inflight = True
        base = self.topology.version if self.topology is not None else -1
        epoch = self.topology.epoch if self.topology is not None else ""

        def work() -> Any:
            if not self.schema_ready:
                self.store.ensure_schema()
                self.schema_ready = True
            if base < 0 or self.cached_start:
                return None
            return self.store.changes_since(base, epoch)

        def done(delta: Any, error: BaseException | None) -> None:
            self._inflight = False
            if error is not None:
                if isinstance(error, StoreUnavailable):
                    self._unavailable(error)
                else:
                    logger.error("cannot read topology changes: %r", error)
            else:
                self._available()
                if delta is None:
                    self._full_load()
                else:
                    self.absorb(delta, base)
            if self._again:
                self._again = False
                self.request()

        self.bg.submit(work, done)

    def catch_up(self, delta: Any, base: int, then: Callable[[], None]) -> None:
        """Serve at least ``delta`` (read from ``base`` right after a change this node wrote),
        then call ``then``: what was read in between, or a full load, is caught up first."""
        current = self.topology
        if delta is not None and delta.version <= current.version:
            then()
            return
        if delta is not None and base == current.version:
            self.absorb(delta, base)
            then()
            return
        version, epoch = current.version, current.epoch

        def done(newer: Any, error: BaseException | None) -> None:
            if error is None and newer is None:
                self.reload(then)  # the change log no longer reaches back: answer after a full load
            elif error is not None:
                then()  # the change is stored; this node catches up on its next check
            else:
                self.catch_up(newer, version, then)

        self.bg.submit(lambda: self.store.changes_since(version, epoch), done)

    def reload(self, then: Callable[[], None]) -> None:
        """Read the whole topology again (the change log no longer reaches back, or the database
        is another one), adopt it, then call ``then`` (loop thread)."""
        self._full_load(then)

    def absorb(self, delta: Any, base: int) -> None:
        """Adopt ``delta`` (read from ``base``); a stale or out-of-order delta asks again."""
        current = self.topology
        if current is None or delta.version <= current.version:
            return
        if base != current.version:
            self._again = True  # read from an older version than ours: read again from ours
            if not self._inflight:
                self._again = False
                self.request()
            return
        self._adopt(current.apply(delta), full=False)

    def _full_load(self, then: Callable[[], None] | None = None) -> None:
        def done(snapshot: Any, error: BaseException | None) -> None:
            try:
                adopt(snapshot, error)
            finally:
                if then is not None:
                    then()

        def adopt(snapshot: Any, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, StoreUnavailable):
                    self._unavailable(error)
                return
            self.cached_start = False
            current = self.topology
            if current is None or (snapshot.version, snapshot.epoch) != (current.version, current.epoch) \
                    or self.full_loads == 0:
                self._adopt(snapshot, full=True)

        self.bg.submit(self.store.snapshot, done)

    def _adopt(self, topology: Topology, full: bool) -> None:
        if full:
            self.full_loads += 1
        else:
            self.deltas += 1
        self.topology = topology
        self.bg.submit(lambda: save_cache(self.cache_path, topology), _log_cache_error)
        self.on_change(topology)

    # -- store health ---------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> None:
        message = getattr(error, "message", str(error))
        now = time.monotonic()
        if self.store_ok or now - self._warned_at >= WARN_EVERY:
            logger.warning("%s; serving on the cached topology", message)
            self._warned_at = now
        self.store_ok = False
        self.last_error = message

    def _available(self) -> None:
        if not self.store_ok:
            logger.info("topology store reachable again")
        self.store_ok = True
        self.last_error = ""

    def note_error(self, error: BaseException) -> None:
        """An admin request found the store unreachable (or working again)."""
        if isinstance(error, StoreUnavailable):
            self._unavailable(error)

    def status(self) -> dict[str, Any]:
        return {
            "version": self.topology.version if self.topology is not None else None,
            "backend": self.store.dialect,
            "url": self.store.url,
            "push": "notify" if self.listener is not None else "poll",
            "listening": bool(self.listener and self.listener.connected),
            "notifications": self.listener.notifications if self.listener is not None else 0,
            "full_loads": self.full_loads,
            "deltas": self.deltas,
            "store": "ok" if self.store_ok else "unavailable",
            "last_error": self.last_error,
        }


# --------------------------------------------------------------------------- cache file


def save_cache(path: Path, topology: Topology) -> None:
    """Write the topology to ``path`` atomically (write, fsync, rename), readable by its owner only."""
    tmp = path.with_suffix(".tmp")
    data = json.dumps(dataclasses.asdict(topology), separators=(",", ":")).encode()
    # private whatever the umask: it names users, their rights and the keys of their logins
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_cache(path: Path) -> Topology | None:
    """The cached topology, or None when there is none (or it cannot be read)."""
    try:
        raw = json.loads(path.read_bytes())
        hints = typing.get_type_hints(Topology)
        values: dict[str, Any] = {"version": int(raw["version"]), "epoch": str(raw.get("epoch", ""))}
        for field in dataclasses.fields(Topology):
            if field.name in values:
                continue
            def_cls = typing.get_args(hints[field.name])[1]
            values[field.name] = {
                name: def_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in item.items()})
                for name, item in raw.get(field.name, {}).items()
            }
        return Topology(**values)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable topology cache %s: %s", path, exc)
        return None


def _log_cache_error(_: Any, error: BaseException | None) -> None:
    if error is not None:
        logger.warning("cannot write the topology cache: %s", error)
