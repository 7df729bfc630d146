"""Change push from PostgreSQL: a thread that LISTENs on ``ec_topology`` and wakes the event loop.

Every topology write commits a ``pg_notify('ec_topology', '<version>')`` (see
:mod:`ecd.topology`); this listener turns each notification into a byte on :attr:`wake_fd`, which
the loop polls. The loop then reads only the changed objects (``changes_since``), never the whole
topology.

The listener owns one dedicated autocommit connection. When it breaks (the database restarts,
the network drops: TCP keepalives and a periodic ``SELECT 1`` notice a silent peer), the thread
reconnects with backoff and wakes the loop once connected again, so anything committed while it
was away is caught up. It never blocks the loop, and it never raises into it.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import sqlalchemy as sa

from .background import WakePipe

logger = logging.getLogger(__name__)

#: The NOTIFY channel topology writes use.
CHANNEL = "ec_topology"
#: Seconds the thread waits for notifications before it checks the connection and the stop flag.
WAIT = 0.5
#: Seconds between liveness probes of an idle connection.
PROBE_INTERVAL = 5.0
#: Reconnect backoff bounds (seconds).
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0


def conninfo(url: str | sa.URL) -> str:
    """A libpq connection string for a SQLAlchemy PostgreSQL URL (any driver suffix)."""
    parsed = sa.make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """LISTEN ``ec_topology`` in a thread; :attr:`wake_fd` turns readable on every change."""

    def __init__(self, url: str | sa.URL, *, channel: str = CHANNEL) -> None:
        self._dsn = conninfo(url)
        self._channel = channel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ecd-listen", daemon=True)
        self._wake_pipe = WakePipe()
        self.connected = False
        self.notifications = 0
        self.reconnects = 0
        self.last_error = ""

    @property
    def wake_fd(self) -> int:
        """Readable when a change was notified (or the listener reconnected)."""
        return self._wake_pipe.fd

    def start(self) -> None:
        """Start listening in the background."""
        self._thread.start()

    def drain(self) -> None:
        """Empty the wake pipe (loop thread)."""
        self._wake_pipe.drain()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the pipe (a thread still connecting writes nothing after)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._wake_pipe.close()

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = BACKOFF_MIN
            except psycopg.Error as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if self.connected or detail != self.last_error:
                    logger.warning("topology change listener disconnected: %s (reconnecting)", detail)
                self.connected = False
                self.last_error = detail
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # never let the thread die silently
                logger.exception("topology change listener failed (restarting)")
                self.connected = False
                self._stop.wait(BACKOFF_MAX)

    def _listen(self) -> None:
        with psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=5,
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        ) as conn:
            conn.execute(f"LISTEN {self._channel}")  # a fixed identifier, never user input
            if self.reconnects or self.last_error:
                logger.info("topology change listener connected again")
            self.reconnects += 1
            self.connected = True
            self.last_error = ""
            self._wake_pipe.wake()  # catch up whatever was committed while we were not listening
            probe_at = time.monotonic() + PROBE_INTERVAL
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=WAIT):
                    self.notifications += 1
                    self._wake_pipe.wake()
                if time.monotonic() >= probe_at:
                    conn.execute("SELECT 1")
                    probe_at = time.monotonic() + PROBE_INTERVAL
