"""Blocking work off the event loop: database queries, git clones, pip installs.

Jobs run in a small thread pool; their outcome is handed back to the loop thread, which polls
``wake_fd`` and calls :meth:`Background.drain` to run each job's callback there. Callbacks thus
never race with the loop's own state.
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


class Background:
    """A thread pool whose results come back to the loop thread through a pipe."""

    def __init__(self, threads: int = 4, name: str = "ecd-bg") -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._done: queue.SimpleQueue[tuple[Callback, Any, BaseException | None]] = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._closed = False
        self._fd_lock = threading.Lock()  # a job never writes to a pipe fd that close() released
        self.pending = 0

    @property
    def wake_fd(self) -> int:
        return self._rfd

    def submit(self, fn: Callable[[], Any], callback: Callback) -> None:
        """Run ``fn()`` in a thread; later ``callback(result, error)`` runs in the loop thread."""
        self.pending += 1

        def job() -> None:
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to the callback, never lost
                result, error = None, exc
            self._done.put((callback, result, error))
            with self._fd_lock:
                if self._closed:
                    return  # the node is stopping: nobody reads the outcome
                try:
                    os.write(self._wfd, b"x")
                except BlockingIOError:
                    pass  # the pipe is full: the loop is awake anyway

        self._pool.submit(job)

    def drain(self) -> int:
        """Run the callbacks of finished jobs (loop thread only); returns how many ran."""
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
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
        with self._fd_lock:
            self._closed = True
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
