"""Dependency-free ``sd_notify(3)`` for running ecd under systemd with ``Type=notify``.

systemd passes the path of a datagram socket in ``NOTIFY_SOCKET``: a file system path
(``/run/systemd/notify``) or, when it starts with ``@``, a Linux abstract socket. A service
reports its state by sending newline-separated ``KEY=VALUE`` assignments to it:

* ``READY=1``     start-up is finished (the unit becomes *active*);
* ``STOPPING=1``  shutdown has begun (ecd is draining its workers);
* ``WATCHDOG=1``  keep-alive; must arrive at least every ``WATCHDOG_USEC`` microseconds;
* ``STATUS=...``  one line of free text shown by ``systemctl status``.

Outside systemd (``NOTIFY_SOCKET`` unset) every call is a no-op returning False. Sending never
raises: a daemon must not die because its supervisor went away; failures are logged at debug.

Modelled on synapse's ``sdnotify`` in ``synapse/app/_base.py``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

__all__ = ["Notifier", "watchdog_interval"]

logger = logging.getLogger(__name__)

#: Environment variable holding the notification socket address.
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
#: Environment variable holding the watchdog period in microseconds.
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
#: Environment variable naming the pid the watchdog applies to (absent: any).
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def _socket_address(value: str | None) -> str | None:
    """Turn a ``NOTIFY_SOCKET`` value into a ``sendto`` address, or None when unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the name begins with a NUL byte instead of '@'.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    logger.debug("ignoring %s=%r: not an absolute path or abstract socket", NOTIFY_SOCKET_ENV, value)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return how often (seconds) to send ``WATCHDOG=1``: half the configured period.

    None when no watchdog is configured, when ``WATCHDOG_USEC`` is not a positive integer, or
    when ``WATCHDOG_PID`` is set to a pid other than ours (the watchdog is meant for another
    process, e.g. we are a child that inherited the environment).
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get(WATCHDOG_USEC_ENV)
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        logger.debug("ignoring %s=%r: not an integer", WATCHDOG_USEC_ENV, raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = env.get(WATCHDOG_PID_ENV)
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            logger.debug("ignoring watchdog: %s=%r is not an integer", WATCHDOG_PID_ENV, raw_pid)
            return None
        if pid != os.getpid():
            return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends state notifications to systemd's ``NOTIFY_SOCKET``.

    ``environ`` defaults to ``os.environ``. With ``unset_environment=True`` the notify and
    watchdog variables are removed from it after reading (like ``sd_notify(unset_environment=1)``)
    so that worker subprocesses running user code do not inherit them.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        self.address: str | None = _socket_address(env.get(NOTIFY_SOCKET_ENV))
        self._watchdog_interval: float | None = watchdog_interval(env)
        if unset_environment:
            for name in (NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV):
                env.pop(name, None)

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured."""
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (newline-separated ``KEY=VALUE`` lines); True if it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode("utf-8"), self.address)
        except (OSError, UnicodeError) as exc:
            logger.debug("sd_notify %r to %r failed: %s", state, self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Report that start-up finished, optionally with a status line."""
        return self.notify("READY=1" + _status_line(status))

    def stopping(self, status: str | None = None) -> bool:
        """Report that shutdown began, optionally with a status line."""
        return self.notify("STOPPING=1" + _status_line(status))

    def watchdog(self) -> bool:
        """Send a watchdog keep-alive."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``."""
        return self.notify(_status_line(text).lstrip("\n"))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd to wait ``seconds`` more for the current start-up or shutdown step."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives (half the watchdog period), or None if not watched."""
        return self._watchdog_interval


def _status_line(text: str | None) -> str:
    """Return ``"\\nSTATUS=text"`` with newlines flattened, or "" for None."""
    if text is None:
        return ""
    flat = " ".join(text.splitlines())
    return f"\nSTATUS={flat}"
