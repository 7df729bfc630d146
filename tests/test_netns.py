"""tests.netns.NetLab with real namespaces and plain sockets: reachability, partitions (both
kinds), heal, isolate/rejoin, reconnection of clients that retry, and a clean tear-down.

Echo servers run inside the namespaces as ``python -c`` processes started through ``lab.cmd``;
every one is stopped by its PID before the lab closes. Each probe is a short-lived client
process with its own connect timeout, so a cut shows up as a bounded failure, never a hang.
"""

from __future__ import annotations

import os
import select
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.netns import NetLab, unavailable_reason
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

#: Echo server: binds 0.0.0.0 (like ``tcp://*:port``) on a free port, prints it, echoes forever.
ECHO_SERVER = """
import socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
with Server((sys.argv[1], 0), Echo) as server:
    print(server.server_address[1], flush=True)
    server.serve_forever()
"""

#: One connection attempt with a timeout: prints "ok <seconds>" or "<error> <seconds>".
PROBE = """
import errno, socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"ping")
        data = b""
        while len(data) < 4 and (chunk := s.recv(4 - len(data))):
            data += chunk
    result = "ok" if data == b"ping" else "short-echo"
except TimeoutError:
    result = "timeout"
except OSError as e:
    result = errno.errorcode.get(e.errno, str(e))
print(result, round(time.monotonic() - start, 3))
"""

#: One connection kept open: echoes each stdin line through it and prints "echo <local port> <line>".
KEEP_OPEN = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(None)
port = s.getsockname()[1]
print("connected", port, flush=True)
for line in sys.stdin:
    s.sendall(line.encode())
    got = b""
    while not got.endswith(b"\\n"):
        chunk = s.recv(65536)
        if not chunk:
            print("closed", flush=True)
            sys.exit(1)
        got += chunk
    print("echo", port, got.decode().strip(), flush=True)
"""

#: A client that retries like a ZeroMQ socket: a 0.5 s connect timeout, 0.1 s between attempts.
RETRYING = """
import socket, sys, time
attempts = 0
while True:
    attempts += 1
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
    except OSError as e:
        if attempts == 1:
            print("failing", type(e).__name__, flush=True)
        time.sleep(0.1)  # the client's reconnect interval
        continue
    print("connected", attempts, flush=True)
    break
"""

#: ZeroMQ ROUTER echo on tcp://*:<free port> (prints the port).
ZMQ_ROUTER = """
import zmq
router = zmq.Context().socket(zmq.ROUTER)
router.linger = 0
print(router.bind_to_random_port("tcp://*"), flush=True)
while True:
    router.send_multipart(router.recv_multipart())
"""

#: ZeroMQ DEALER with default reconnect options: sends each stdin line, prints the reply.
ZMQ_DEALER = """
import sys, zmq
dealer = zmq.Context().socket(zmq.DEALER)
dealer.linger = 0
dealer.connect(f"tcp://{sys.argv[1]}:{sys.argv[2]}")
for line in sys.stdin:
    dealer.send(line.strip().encode())
    if not dealer.poll(30000):
        print("no reply", flush=True)
        sys.exit(1)
    print("reply", dealer.recv().decode(), flush=True)
"""


@pytest.fixture(scope="module")
def namespaces_work() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


class Proc:
    """A child process whose stdout is read line by line with a deadline."""

    def __init__(self, argv: list[str], stdin: bool = False) -> None:
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def readline(self, timeout: float) -> str | None:
        """The next stdout line, or None if none came within ``timeout`` seconds."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"process {self.pid} exited ({self.popen.wait(5)}): {self.stderr()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()

    def expect(self, timeout: float, what: str) -> str:
        line = self.readline(timeout)
        if line is None:
            raise AssertionError(f"no line from process {self.pid} within {timeout}s: {what}")
        return line

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def stderr(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return ""
        return self.popen.stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


Start = Callable[..., Proc]


@pytest.fixture
def lab(namespaces_work: None) -> Iterator[NetLab]:
    with NetLab(3, "ectest") as lab:
        yield lab


@pytest.fixture
def start(lab: NetLab) -> Iterator[Start]:
    """``start(i, source, *args)``: run ``python -c source args`` in namespace i (None: the root
    namespace); every process is stopped by its PID at the end, before the lab closes."""
    procs: list[Proc] = []

    def run(i: int | None, source: str, *args: str, stdin: bool = False) -> Proc:
        argv = [sys.executable, "-I", "-c", source, *args]
        proc = Proc(argv if i is None else lab.cmd(i, argv), stdin=stdin)
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        proc.stop()


@pytest.fixture
def servers(lab: NetLab, start: Start) -> dict[int, int]:
    """An echo server in every namespace: node -> port."""
    procs = {i: start(i, ECHO_SERVER, "0.0.0.0") for i in range(lab.n)}
    return {i: int(proc.expect(15, f"echo server {i} to listen")) for i, proc in procs.items()}


@pytest.fixture
def root_server(lab: NetLab) -> Iterator[int]:
    """An echo server in the root namespace, on the bridge address only: its port."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server((lab.root_address, 0), Echo)
    thread = threading.Thread(target=server.serve_forever, name="root-echo", daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def probe(lab: NetLab, source: int | None, host: str, port: int, timeout: float = 1.0) -> tuple[str, float]:
    """Connect from node ``source`` (None: the root namespace) to host:port and echo 4 bytes."""
    argv = [sys.executable, "-I", "-c", PROBE, host, str(port), str(timeout)]
    done = subprocess.run(argv if source is None else lab.cmd(source, argv), capture_output=True, text=True,
                          timeout=timeout + 15)
    assert done.returncode == 0, done.stderr
    result, seconds = done.stdout.split()
    return result, float(seconds)


def reaches(lab: NetLab, source: int | None, target: int | None, servers: dict[int, int], root_port: int) -> str:
    """The probe's result from ``source`` to node ``target`` (None: the root namespace)."""
    if target is None:
        return probe(lab, source, lab.root_address, root_port)[0]
    return probe(lab, source, lab.address(target), servers[target])[0]


def test_addresses_and_commands(namespaces_work: None) -> None:
    with NetLab(2, "ectest") as lab:
        net = str(lab.subnet.network_address).rsplit(".", 1)[0]
        assert [lab.address(0), lab.address(1), lab.root_address] == [f"{net}.1", f"{net}.2", f"{net}.254"]
        assert lab.cmd(1, ["true"]) == ["ip", "netns", "exec", lab.namespaces[1], "true"]
        assert lab.namespaces == [f"ec{os.getpid()}-0", f"ec{os.getpid()}-1"]
        assert len(lab.bridge) <= 15 and lab.bridge.startswith("ectest")
        with pytest.raises(IndexError):
            lab.address(2)
        with pytest.raises(ValueError):
            lab.partition(1, 1)
        inside = subprocess.run(lab.cmd(0, ["ip", "-4", "-o", "addr", "show"]), capture_output=True, text=True,
                                timeout=10, check=True).stdout
        assert f"{lab.address(0)}/24" in inside and "127.0.0.1" in inside


def test_bad_arguments_create_nothing() -> None:
    with pytest.raises(ValueError):
        NetLab(0)
    with pytest.raises(ValueError):
        NetLab(1, "no spaces")


def test_everyone_reaches_everyone(lab: NetLab, servers: dict[int, int], root_server: int) -> None:
    for target in range(lab.n):
        assert reaches(lab, None, target, servers, root_server) == "ok", f"root -> {target}"
    for source in range(lab.n):
        for target in [*range(lab.n), None]:
            assert reaches(lab, source, target, servers, root_server) == "ok", f"{source} -> {target}"


@pytest.mark.parametrize("how", ["drop", "reject"])
def test_a_partition_cuts_only_the_pair_until_healed(lab: NetLab, servers: dict[int, int], root_server: int,
                                                     how: str) -> None:
    lab.partition(0, 1, how=how)
    lab.partition(0, 1, how=how)  # idempotent
    for source, target in ((0, 1), (1, 0)):
        result, seconds = probe(lab, source, lab.address(target), servers[target], timeout=1.0)
        if how == "drop":  # silent: the connection attempt hangs until the client's own timeout
            assert result == "timeout", (source, target, result)
        else:  # refused at once, as after an ICMP host-unreachable
            assert (result, seconds < 0.5) == ("EHOSTUNREACH", True), (source, target, result, seconds)
    for source, target in ((0, 2), (1, 2), (2, 0), (2, 1), (0, None), (1, None), (None, 0), (None, 1)):
        assert reaches(lab, source, target, servers, root_server) == "ok", f"{source} -> {target}"

    lab.heal(0, 1)
    lab.heal(0, 1)  # idempotent
    for source, target in ((0, 1), (1, 0)):
        wait_for(lambda: reaches(lab, source, target, servers, root_server) == "ok", 15,
                 what=f"{source} -> {target} after heal")


def test_a_partition_can_change_kind(lab: NetLab, servers: dict[int, int]) -> None:
    lab.partition(0, 1, how="reject")
    lab.partition(0, 1, how="drop")
    assert probe(lab, 0, lab.address(1), servers[1])[0] == "timeout"
    lab.heal(0, 1)
    wait_for(lambda: probe(lab, 0, lab.address(1), servers[1])[0] == "ok", 15, what="0 -> 1 after heal")


def test_an_open_connection_stalls_during_a_partition_and_resumes_after_heal(
        lab: NetLab, servers: dict[int, int], start: Start) -> None:
    client = start(0, KEEP_OPEN, lab.address(1), str(servers[1]), stdin=True)
    _, port = client.expect(10, "the connection").split()
    client.send("one")
    assert client.expect(10, "the first echo") == f"echo {port} one"

    lab.partition(0, 1)
    client.send("two")
    assert client.readline(1.5) is None  # silently lost, not refused: the connection stays open
    lab.heal(0, 1)
    assert client.expect(20, "the retransmitted line after heal") == f"echo {port} two"  # same connection


@pytest.mark.parametrize("how", ["drop", "reject"])
def test_a_client_that_retries_connects_after_heal(lab: NetLab, servers: dict[int, int], start: Start,
                                                   how: str) -> None:
    lab.partition(0, 1, how=how)
    client = start(0, RETRYING, lab.address(1), str(servers[1]))
    assert client.expect(10, "the first failed attempt").startswith("failing")
    assert client.readline(1.0) is None  # still failing while partitioned
    lab.heal(0, 1)
    assert client.expect(10, "a connection after heal").startswith("connected")


@pytest.mark.parametrize("how", ["drop", "reject"])
def test_zeromq_gets_through_again_after_heal(lab: NetLab, start: Start, how: str) -> None:
    probe_zmq = subprocess.run([sys.executable, "-c", "import zmq"], capture_output=True, timeout=30)
    if probe_zmq.returncode != 0:
        pytest.skip(f"pyzmq is not installed for {sys.executable}")
    router = start(1, ZMQ_ROUTER)
    port = router.expect(15, "the ROUTER to bind")
    dealer = start(0, ZMQ_DEALER, lab.address(1), port, stdin=True)
    dealer.send("before")
    assert dealer.expect(15, "the first reply") == "reply before"

    lab.partition(0, 1, how=how)
    dealer.send("during")
    assert dealer.readline(1.5) is None
    lab.heal(0, 1)
    assert dealer.expect(25, "the reply after heal") == "reply during"


def test_isolate_and_rejoin(lab: NetLab, servers: dict[int, int], root_server: int) -> None:
    lab.isolate(0)
    lab.isolate(0)  # idempotent
    for source, target in ((0, 1), (0, None), (None, 0), (2, 0)):
        assert reaches(lab, source, target, servers, root_server) != "ok", f"{source} -> {target}"
    for source, target in ((1, 2), (2, 1), (None, 1), (1, None)):
        assert reaches(lab, source, target, servers, root_server) == "ok", f"{source} -> {target}"

    lab.rejoin(0)
    for source, target in ((0, 1), (0, None), (None, 0), (2, 0)):
        wait_for(lambda: reaches(lab, source, target, servers, root_server) == "ok", 15,
                 what=f"{source} -> {target} after rejoin")


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10, check=True).stdout


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout


def _made_by(lab: NetLab) -> list[str]:
    """Every name the lab created (bridge, veth ends, namespaces) still visible in the root namespace."""
    links, namespaces = _links(), _netns()
    names = [lab.bridge, *(f"ve{lab.tag}{end}{i}" for end in "hn" for i in range(lab.n))]
    return [name for name in names if f" {name}:" in links or f" {name}@" in links] + \
        [ns for ns in lab.namespaces if ns in namespaces.split()]


def test_close_removes_what_it_made_and_nothing_else(namespaces_work: None) -> None:
    other = f"ecx{os.getpid()}"  # not the lab's: must survive its close
    subprocess.run(["ip", "link", "add", other, "type", "bridge"], check=True, capture_output=True, timeout=10)
    try:
        lab = NetLab(2, "ectest")
        assert len(_made_by(lab)) == 1 + 2 + 2  # bridge, host-side veths, namespaces (inner veths live inside)
        # A process left running in a namespace must not keep the veth pair or namespace alive.
        leftover = subprocess.Popen(lab.cmd(1, [sys.executable, "-I", "-c", "import time; time.sleep(600)"]))
        try:
            wait_for(lambda: str(leftover.pid) in subprocess.run(
                ["ip", "netns", "pids", lab.namespaces[1]], capture_output=True, text=True, timeout=10).stdout.split(),
                10, what="the leftover process to enter its namespace")
            lab.close()
            assert leftover.wait(timeout=10) == -signal.SIGKILL
        finally:
            if leftover.poll() is None:
                os.kill(leftover.pid, signal.SIGKILL)
                leftover.wait(timeout=10)
        assert _made_by(lab) == []
        assert f" {other}:" in _links()
        lab.close()  # idempotent
    finally:
        subprocess.run(["ip", "link", "del", other], capture_output=True, timeout=10)


def test_a_failing_test_still_removes_the_namespaces(namespaces_work: None) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        with NetLab(2, "ectest") as lab:
            assert _made_by(lab)
            raise RuntimeError("the test failed")
    assert _made_by(lab) == []


def test_two_labs_at_once_do_not_clash(namespaces_work: None) -> None:
    with NetLab(1, "ectest") as first, NetLab(1, "ectest") as second:
        assert first.tag != second.tag and first.bridge != second.bridge
        assert not first.subnet.overlaps(second.subnet)
        assert set(first.namespaces).isdisjoint(second.namespaces)
        for lab in (first, second):
            out = subprocess.run(lab.cmd(0, ["ip", "-4", "-o", "addr", "show"]), capture_output=True, text=True,
                                 timeout=10, check=True).stdout
            assert lab.address(0) in out
    assert _made_by(first) == [] and _made_by(second) == []

