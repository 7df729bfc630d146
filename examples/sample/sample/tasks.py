"""An ElasticCode sample processor: plain functions that ecd workers call by name.

A processor is a git repository plus a module inside it (here ``sample.tasks``); ecd
clones the repository, puts the checkout root on the worker's import path, imports the
module and, for each call arriving on a socket, runs the socket's function with the
call's arguments. Arguments and return values travel as msgpack, so they must be
msgpack-able (None, bool, int, float, str, bytes, lists and str-keyed dicts).

Anything a function prints goes to ecd's log (the journal under systemd), tagged with
the processor and worker. An exception is reported to the caller as the call's error;
``crash`` kills the worker process outright to exercise ecd's recovery.
"""

from __future__ import annotations

import os
import socket
import uuid
import time
from typing import Any


def do_something(message: Any, *more: Any) -> str:
    """Return ``"Do something: <message> <more>..."``, printing a line to show where output goes.

    In a workflow a step gets the previous step's result first, then its own arguments:
    ``do_something("Two")`` after a step that returned ``"x"`` returns ``"Do something: x Two"``.
    """
    print(f"Doing something with {message!r} in worker {os.getpid()}", flush=True)
    return "Do something: " + " ".join(str(part) for part in (message, *more))


def do_this(message: Any, *more: Any) -> str:
    """Return ``"Do this: <message> <more>..."``."""
    return "Do this: " + " ".join(str(part) for part in (message, *more))


def add_two(one: Any, two: Any) -> Any:
    """Return ``one + two``."""
    return one + two


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return the call's arguments: ``{"args": [...], "kwargs": {...}}``."""
    return {"args": list(args), "kwargs": kwargs}


def fail(message: str = "boom") -> None:
    """Raise ``ValueError(message)``: the call fails with that error."""
    raise ValueError(message)


def sleep(seconds: float) -> float:
    """Sleep ``seconds`` seconds (occupying a CPU slot) and return them."""
    time.sleep(float(seconds))
    return seconds


def slow_echo(value: Any, seconds: float = 0.1) -> Any:
    """Sleep ``seconds`` (0.1 by default), then return ``value``: a slow consumer."""
    time.sleep(float(seconds))
    return value


def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing and return None (for measuring call overhead)."""
    return None


def crash(code: int = 1) -> None:
    """Kill the worker process immediately with exit status ``code``, simulating a worker
    that dies mid-call (segfault, OOM kill); ecd must notice and retry or fail the call."""
    os._exit(int(code))


def pid() -> int:
    """Return the worker's process id (shows which worker ran a call)."""
    return os.getpid()


def count(n: int, delay: float = 0.0) -> Any:
    """A generator: yields 0, 1, ... n-1, sleeping ``delay`` seconds before each (a streaming
    socket: ``ecctl run --stream`` prints each number as it comes; plugs fire per number)."""
    for i in range(int(n)):
        if delay:
            time.sleep(float(delay))
        yield i


def produce(n: int) -> Any:
    """A generator of ``{"i": i, "at": <time it was made>}``: shows how far a producer runs
    ahead of a slow reader."""
    for i in range(int(n)):
        yield {"i": i, "at": time.time()}


def token(*args: Any, **kwargs: Any) -> str:
    """Return a value unique to this execution (``sleep`` seconds first, if given): two runs of
    one call give two different tokens, so a test can tell which run's result it sees."""
    if args:
        time.sleep(float(args[0]))
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
