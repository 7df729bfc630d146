"""This machine's load, as the node announces it in its mesh heartbeat.

:class:`HostStats` samples three percentages (0-100, rounded to 0.1) with psutil, its one home
module in ecd:

* ``load``    CPU busy since the previous sample (``psutil.cpu_percent(interval=None)``, which
  never blocks: it compares the CPU times with those of the previous call *in the same thread*;
  the constructor primes it, so the first sample taken in the constructing thread is meaningful.
  A first sample in another thread reads 0.0);
* ``memory``  virtual memory in use (``virtual_memory().percent``);
* ``disk``    space used on the file system holding the data directory (``disk_usage``).

Sampling is cheap and never raises: a key whose psutil call fails (a missing data directory,
an unreadable /proc) reads 0.0 and the failure is logged at debug. A heartbeat must not die
because a statistic is unavailable. Samples are cached for :data:`DEFAULT_CACHE_SECONDS`, so
callers may ask more often than once a second without extra cost. Not thread-safe: one owner
(the node's event loop) samples it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = ["DEFAULT_CACHE_SECONDS", "HostStats"]

logger = logging.getLogger(__name__)

#: How long (seconds) a sample is reused before psutil is asked again.
DEFAULT_CACHE_SECONDS = 1.0

#: The keys of a sample, in heartbeat order.
KEYS = ("load", "memory", "disk")


def _percent(value: float) -> float:
    """A percentage clamped to 0..100 and rounded to 0.1."""
    return round(min(max(float(value), 0.0), 100.0), 1)


class HostStats:
    """Load of this machine for the heartbeat: ``sample()`` -> ``{"load", "memory", "disk"}``."""

    def __init__(self, data_dir: Path, *, cache_seconds: float = DEFAULT_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._data_dir = Path(data_dir)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cached: dict[str, float] | None = None
        self._cached_at = 0.0
        self._read("load", lambda: psutil.cpu_percent(interval=None))  # prime: the first call has no baseline

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    def sample(self) -> dict[str, float]:
        """The current percentages; the cached ones if the last sample is under a second old."""
        now = self._clock()
        if self._cached is None or now - self._cached_at >= self._cache_seconds:
            self._cached = {
                "load": self._read("load", lambda: psutil.cpu_percent(interval=None)),
                "memory": self._read("memory", lambda: psutil.virtual_memory().percent),
                "disk": self._read("disk", lambda: psutil.disk_usage(str(self._data_dir)).percent),
            }
            self._cached_at = now
        return dict(self._cached)

    @staticmethod
    def _read(key: str, read: Callable[[], float]) -> float:
        try:
            return _percent(read())
        except Exception as e:  # psutil.Error, OSError, ...: a heartbeat never fails on a statistic
            logger.debug("host stats: cannot read %s: %s", key, e, exc_info=True)
            return 0.0
