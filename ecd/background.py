"""Blocking work off the event loop: database queries, git clones, pip installs.

Jobs run in a small thread pool; their outcome is handed back to the loop thread, which polls
``wake_fd`` and calls :meth:`Background.drain` to run each job's callback there. Callbacks thus
never race with the loop's own state. :class:`WakePipe` is the wake-up itself, shared with the
other threads that wake the loop (the PostgreSQL change listener).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

logger = logging.getLogger(__name__)

Callback = Callable[[Any, BaseException | None], None]


class WakePipe:
    """A pipe another thread writes a byte to so the loop, polling :attr:`fd`, wakes up.

    :meth:`wake` is safe from any thread, also during and after :meth:`close`: once closed it
    writes nothing (a write to a released descriptor could land in whatever file reuses it).
    """

    def __init__(self) -> None:
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def fd(self) -> int:
        return self._rfd

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._wfd, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the loop is awake anyway

    def drain(self) -> None:
        """Empty the pipe (loop thread)."""
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._rfd, self._wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass


class Background:
    """A thread pool whose results come back to the loop thread through a pipe."""

    def __init__(self, threads: int = 4, name: str = "ecd-bg") -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._done: queue.SimpleQueue[tuple[Callback, Any, BaseException | None]] = queue.SimpleQueue()
        self._wake = WakePipe()
        self.pending = 0

    @property
    def wake_fd(self) -> int:
        return self._wake.fd

    def submit(self, fn: Callable[[], Any], callback: Callback) -> None:
        """Run ``fn()`` in a thread; later ``callback(result, error)`` runs in the loop thread."""
        self.pending += 1

        def job() -> None:
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to the callback, never lost
                result, error = None, exc
            self._done.put((callback, result, error))
            self._wake.wake()

        self._pool.submit(job)

    def drain(self) -> int:
        """Run the callbacks of finished jobs (loop thread only); returns how many ran."""
        self._wake.drain()
        ran = 0
        while True:
            try:
                callback, result, error = self._done.get_nowait()
            except queue.Empty:
                return ran
            self.pending -= 1
            ran += 1
            try:
                callback(result, error)
            except Exception:
                logger.exception("background callback failed")

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        self._wake.close()
