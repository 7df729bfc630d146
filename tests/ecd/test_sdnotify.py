"""Tests for ecd.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from ecd import sdnotify

Notifier = sdnotify.Notifier

pytestmark = pytest.mark.timeout(30)

RECV_TIMEOUT = 5.0


@pytest.fixture
def path_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in a short temp dir (sun_path is limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ecsd") as tmp:
        address = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.settimeout(RECV_TIMEOUT)
        sock.bind(address)
        try:
            yield sock, address
        finally:
            sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in the abstract namespace; yields it and its '@name' form."""
    name = f"ec-sdnotify-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(RECV_TIMEOUT)
    sock.bind("\0" + name)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    """Receive one datagram as text (bounded by the socket timeout)."""
    return sock.recv(4096).decode("utf-8")


def test_unset_is_noop() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.ready() is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False
    assert notifier.status("hi") is False
    assert notifier.watchdog_interval() is None


def test_relative_path_is_ignored() -> None:
    assert Notifier({"NOTIFY_SOCKET": "relative/notify"}).notify("READY=1") is False


def test_path_socket_receives_states(path_socket: tuple[socket.socket, str]) -> None:
    sock, address = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready() is True
    assert recv(sock) == "READY=1"
    assert notifier.watchdog() is True
    assert recv(sock) == "WATCHDOG=1"
    assert notifier.status("serving 3 processors") is True
    assert recv(sock) == "STATUS=serving 3 processors"
    assert notifier.stopping("draining\nworkers") is True
    assert recv(sock) == "STOPPING=1\nSTATUS=draining workers"
    assert notifier.extend_timeout(1.5) is True
    assert recv(sock) == "EXTEND_TIMEOUT_USEC=1500000"


def test_abstract_socket_receives_states(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, address = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.ready("up") is True
    assert recv(sock) == "READY=1\nSTATUS=up"
    assert notifier.notify("WATCHDOG=1") is True
    assert recv(sock) == "WATCHDOG=1"


def test_reads_process_environment(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert Notifier().ready() is True
    assert recv(sock) == "READY=1"


def test_send_failure_returns_false_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="ecsd") as tmp:
        notifier = Notifier({"NOTIFY_SOCKET": os.path.join(tmp, "nobody-listens")})
        with caplog.at_level(logging.DEBUG, logger="ecd.sdnotify"):
            assert notifier.ready() is False
    assert any("failed" in record.getMessage() for record in caplog.records)


def test_send_after_receiver_closed_does_not_raise() -> None:
    with tempfile.TemporaryDirectory(prefix="ecsd") as tmp:
        address = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        sock.close()
        assert notifier.watchdog() is False


def test_unset_environment_removes_variables(path_socket: tuple[socket.socket, str]) -> None:
    sock, address = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "OTHER": "x"}
    notifier = Notifier(env, unset_environment=True)
    assert env == {"OTHER": "x"}
    assert notifier.watchdog_interval() == 15.0
    assert notifier.watchdog() is True
    assert recv(sock) == "WATCHDOG=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "other"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "junk"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pids = {"self": str(os.getpid()), "other": str(os.getpid() + 1), "junk": "x1"}
    if "WATCHDOG_PID" in env:
        env = {**env, "WATCHDOG_PID": pids[env["WATCHDOG_PID"]]}
    assert sdnotify.watchdog_interval(env) == expected
    assert Notifier(env).watchdog_interval() == expected
