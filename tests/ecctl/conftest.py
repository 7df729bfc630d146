"""Fixtures for ecctl tests: a fake ecd peer (a ROUTER in a thread) that speaks the protocol.

The fake answers PING, CALL (runs the function inline, keeps the outcome), GET (optionally
PENDING first), and ADMIN (canned data per op); it records every request it received.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import protocol


def _echo(*args: Any, **kwargs: Any) -> Any:
    if kwargs:
        return {"args": list(args), "kwargs": kwargs}
    return args[0] if len(args) == 1 else list(args)


def _boom(*args: Any) -> Any:
    raise ValueError("bad input")


class FakeDaemon:
    """ROUTER peer answering per the protocol; tweak its attributes from the test."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.received: list[Any] = []
        self.functions: dict[str, Callable[..., Any]] = {
            "echo": _echo,
            "boom": _boom,
            "blob": lambda *a: b"\x00\x01raw\xff",
            "obj": lambda *a: {"n": 1, "list": [1, 2.5, None], "s": "x"},
            "upper": lambda s: s.upper(),
            "never": lambda *a: None,
        }
        self.admin: dict[str, Any] = {}
        self.drop_calls = 0           # CALLs to swallow without an answer
        self.pending_polls = 0        # GETs answered PENDING before the result
        self.stale_first = False      # send a reply with a wrong request id first
        self.never_finish = {"never"}
        self.results: dict[str, Any] = {}
        self.seq = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- lifecycle
    def start(self) -> FakeDaemon:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                ident, *frames = sock.recv_multipart()
                msg = protocol.decode(frames)
                self.received.append(msg)
                reply = self.handle(msg)
                if reply is None:
                    continue
                if self.stale_first:
                    stale = _with_rid(reply, b"stale!!!")
                    sock.send_multipart([ident, *protocol.encode(stale)])
                sock.send_multipart([ident, *protocol.encode(_with_rid(reply, msg.request_id))])
        finally:
            sock.close(0)
            ctx.term()

    # -- protocol
    def handle(self, msg: Any) -> Any:
        if isinstance(msg, protocol.Ping):
            return protocol.Pong(node="fake", version="0.0-test", time=1.0)
        if isinstance(msg, protocol.Call):
            return self._call(msg)
        if isinstance(msg, protocol.Get):
            if msg.call_id not in self.results:
                return protocol.Error(code=protocol.E_NOT_FOUND, reason=f"unknown call {msg.call_id}")
            if self.pending_polls > 0 or self.results[msg.call_id] is None:
                self.pending_polls = max(0, self.pending_polls - 1)
                return protocol.Pending(call_id=msg.call_id, state="running")
            return self.results[msg.call_id]
        if isinstance(msg, protocol.Admin):
            data = self.admin.get(msg.op, {"op": msg.op, "args": msg.args})
            if isinstance(data, protocol.Error):
                return data
            return protocol.Reply(data=data)
        return protocol.Error(code=protocol.E_MALFORMED, reason="unexpected")

    def _call(self, msg: Any) -> Any:
        if self.drop_calls > 0:
            self.drop_calls -= 1
            return None
        fn = self.functions.get(msg.socket)
        if fn is None:
            return protocol.Error(code=protocol.E_NOT_FOUND, reason=f"unknown socket {msg.socket!r}",
                                  detail={"socket": msg.socket})
        duplicate = msg.call_id in self.results
        if not duplicate:
            self.seq += 1
            if msg.socket in self.never_finish:
                self.results[msg.call_id] = None
            else:
                self.results[msg.call_id] = self._run_fn(msg, fn)
        return protocol.Accepted(call_id=msg.call_id, seq=self.seq, node="fake", duplicate=duplicate)

    @staticmethod
    def _run_fn(msg: Any, fn: Callable[..., Any]) -> Any:
        try:
            value = fn(*protocol.unpack(msg.args), **protocol.unpack(msg.kwargs))
        except Exception as exc:
            return protocol.Result(call_id=msg.call_id, ok=False, error={
                "type": type(exc).__name__, "message": str(exc),
                "traceback": traceback.format_exc()})
        return protocol.Result(call_id=msg.call_id, ok=True, value=protocol.pack(value))

    def of_type(self, kind: type) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]


def _with_rid(msg: Any, rid: bytes) -> Any:
    import dataclasses
    return dataclasses.replace(msg, request_id=rid)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short temp dir (ipc paths are limited to ~107 bytes)."""
    path = tempfile.mkdtemp(prefix="ecctl", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaemon]:
    """A running fake daemon; EC_ENDPOINT points at it."""
    daemon = FakeDaemon(f"ipc://{os.path.join(short_dir, 'ecd.sock')}").start()
    monkeypatch.setenv("EC_ENDPOINT", daemon.endpoint)
    yield daemon
    daemon.stop()


@pytest.fixture
def fake_daemon_cls() -> type[FakeDaemon]:
    """The FakeDaemon class, for tests that start more than one."""
    return FakeDaemon
