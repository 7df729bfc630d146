"""NetLab: daemons in separate Linux network namespaces, so a test can cut the link between two
nodes (a partition) without a firewall. Needs root and ``ip netns`` (iproute2); tests skip with
:func:`unavailable_reason` elsewhere.

Layout of ``NetLab(3)`` run by pid 4242 (subnet 10.X.0.0/24, X picked from the pid and skipped
while that /24 is already routed on the host)::

    root namespace (the test runner)
      bridge ecbr4242 10.X.0.254/24
        +-- ve4242h0 <-veth-> ve4242n0 10.X.0.1/24   in namespace ec4242-0 (and lo up)
        +-- ve4242h1 <-veth-> ve4242n1 10.X.0.2/24   in namespace ec4242-1
        +-- ve4242h2 <-veth-> ve4242n2 10.X.0.3/24   in namespace ec4242-2

A second lab alive in the same process gets the tag ``4242a`` (then ``4242b``...) instead of
``4242``, and so does one whose names are still held by a crashed earlier run with the same pid.

Cuts, all made inside the namespaces, so the root namespace and the other nodes are unaffected:

* ``partition(i, j)`` (default ``how="drop"``): packets between i and j are lost silently, as on
  a real partition: ``connect()`` hangs in SYN retransmission and an open connection stalls (its
  data is retransmitted with backoff), then both go on after ``heal``. Made with a permanent
  neighbour (ARP) entry in i giving j's address a MAC no interface has (:data:`SINK_MAC`), and
  the same in j for i: their frames still cross the bridge but every receiver drops them as not
  its own. Routes cannot do this for packets a namespace sends itself: a ``blackhole`` route
  makes ``connect()`` fail at once with ``EINVAL`` and ``prohibit`` with ``EACCES``; a route into
  ``lo`` is silent only by accident (the looped SYN reaches the namespace's own listeners on
  0.0.0.0, whose answer is then refused for its non-local source address).
* ``partition(i, j, how="reject")``: ``unreachable`` routes (``ADDR/32``) in i and j:
  ``connect()`` fails at once with ``EHOSTUNREACH``, as after an ICMP host-unreachable from a
  router, and a ZeroMQ socket retries every reconnect interval.
* ``isolate(i)``: the bridge-side veth of i goes down (a pulled cable): i reaches nobody and
  nobody, root namespace included, reaches i; packets are dropped silently. ``rejoin(i)`` puts
  it up and waits until the bridge forwards again.

Reconnection after ``heal`` (measured with pyzmq 27 / libzmq 4.3.5 on Linux 6.18, default
socket options): a ZeroMQ DEALER, like any TCP client that retries, gets through again ~0.1 s
after a "reject" cut heals; after a 10 s "drop" cut, ~1.4 s when it connected during the cut
and ~3.3 s when the connection was open before it (~0.5 s with heartbeats and a 0.5 s
``ZMQ_CONNECT_TIMEOUT``). A ``connect()`` begun during a "drop" cut succeeds at its next SYN
retransmission (1 s apart for the first ``net.ipv4.tcp_syn_linear_timeouts`` retries on recent
kernels, then doubling); an open connection resumes at its next data retransmission (the RTO
doubles from 0.2 s). ``ZMQ_CONNECT_TIMEOUT`` and heartbeats (``ZMQ_HEARTBEAT_IVL``/``_TIMEOUT``)
bound that wait: the socket drops the stalled attempt and retries every reconnect interval.
After "reject" cuts (and ``blackhole`` routes, had they been used) every attempt fails at once,
so the socket is back within one reconnect interval.

Every process started with :meth:`NetLab.cmd` runs inside a namespace; ``ip netns exec`` execs
the command, so ``Popen.pid`` is the process itself and can be stopped by its PID. ``close()``
(also on ``__exit__`` and at interpreter exit) kills what is still running in the lab's
namespaces, then deletes the veths, namespaces and bridge the lab made, and nothing else.
Hosts where ``br_netfilter`` is loaded with iptables rules that drop forwarded traffic (e.g.
Docker's) also filter bridged traffic; the lab cannot undo that without changing the host.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.waiting import wait_for

__all__ = ["NetLab", "NetLabError", "available", "unavailable_reason"]

logger = logging.getLogger(__name__)

#: Seconds any one ``ip`` command may take.
DEFAULT_COMMAND_TIMEOUT = 10.0
#: Seconds a lab waits for its links to forward (after set-up and ``rejoin``).
DEFAULT_LINK_TIMEOUT = 10.0
#: The longest interface name Linux accepts (IFNAMSIZ - 1).
IFNAMSIZ = 15
#: The most nodes a /24 holds besides the bridge's .254.
MAX_NODES = 253
#: The link-layer address a "drop" partition gives the peer: locally administered, unicast, and
#: held by no interface, so frames sent to it are dropped by every receiver.
SINK_MAC = "02:ec:00:00:de:ad"

Cut = Literal["drop", "reject"]

_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_lock = threading.Lock()
_live_tags: set[str] = set()


class NetLabError(RuntimeError):
    """A namespace, link or route command failed (the message has its argv and stderr)."""


def _run(argv: Sequence[str], timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
    try:
        done = subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.CalledProcessError as e:
        raise NetLabError(f"{' '.join(argv)} exited with {e.returncode}: {(e.stderr or '').strip()}") from e
    except subprocess.TimeoutExpired as e:
        raise NetLabError(f"{' '.join(argv)} took more than {timeout}s") from e
    except OSError as e:
        raise NetLabError(f"{' '.join(argv)}: {e}") from e
    return done.stdout


def _json(argv: Sequence[str]) -> list[dict]:
    out = _run(argv).strip()
    return json.loads(out) if out else []


def _links() -> set[str]:
    """Interface names in the root namespace."""
    return {link["ifname"] for link in _json(["ip", "-j", "link", "show"])}


def _namespaces() -> set[str]:
    return {ns["name"] for ns in _json(["ip", "-j", "netns", "list"])}


@cache
def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (None when they can), for ``pytest.skip``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is not installed"
    probe = f"ec{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except NetLabError as e:
        return f"cannot create a network namespace: {e}"
    try:
        _run(["ip", "netns", "del", probe])
    except NetLabError as e:
        return f"cannot delete a network namespace: {e}"
    return None


def available() -> bool:
    """True when running as root and ``ip netns add``/``del`` work."""
    return unavailable_reason() is None


def _used_subnets() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination routed in the root namespace (all tables), default excluded."""
    nets = []
    for route in _json(["ip", "-4", "-j", "route", "show", "table", "all"]):
        try:
            nets.append(ipaddress.IPv4Network(route.get("dst", ""), strict=False))
        except ValueError:  # "default", multicast keywords, ...
            continue
    return nets


class NetLab:
    """``n`` network namespaces joined by a bridge in the root namespace; see the module doc.

    ``NetLab(n, prefix)`` creates everything (and removes what it made if that fails);
    use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, n: int, prefix: str = "ecbr", *, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        if not 1 <= n <= MAX_NODES:
            raise ValueError(f"a lab has 1..{MAX_NODES} nodes, not {n}")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"prefix {prefix!r} must be a letter followed by letters, digits or _")
        self.n = n
        self.timeout = timeout
        # What this lab created, so close() removes exactly that.
        self._made_bridge: str | None = None
        self._made_namespaces: list[str] = []
        self._made_veths: list[str] = []
        self._cuts: dict[frozenset[int], Cut] = {}
        self._isolated: set[int] = set()
        self._closed = False
        with _lock:
            self.tag = self._pick_tag(prefix)
            _live_tags.add(self.tag)
        self.bridge = self._bridge_name(prefix, self.tag)
        self.namespaces = [f"ec{self.tag}-{i}" for i in range(n)]
        self._host_veths = [f"ve{self.tag}h{i}" for i in range(n)]
        self._ns_veths = [f"ve{self.tag}n{i}" for i in range(n)]
        atexit.register(self.close)
        try:
            self.subnet = self._pick_subnet()
            self._create()
            self._wait_forwarding(range(n))
        except BaseException:
            try:
                self.close()
            except NetLabError:
                logger.exception("NetLab: cleanup after a failed set-up failed")
            raise

    # -- names and addresses ------------------------------------------------------------------

    @staticmethod
    def _bridge_name(prefix: str, tag: str) -> str:
        return prefix[: IFNAMSIZ - len(tag)] + tag

    def _pick_tag(self, prefix: str) -> str:
        """``<pid>``, or ``<pid>a``.. when another lab of this process (or a crashed run with the
        same pid) holds the names."""
        pid = str(os.getpid())
        links, namespaces = _links(), _namespaces()
        for suffix in ["", *"abcdefghijklmnopqrstuvwxyz"]:
            tag = pid + suffix
            names = {self._bridge_name(prefix, tag)} | {f"ve{tag}{end}{i}" for end in "hn" for i in range(self.n)}
            if tag in _live_tags or names & links or any(ns.startswith(f"ec{tag}-") for ns in namespaces):
                continue
            if any(len(name) > IFNAMSIZ for name in names):
                raise ValueError(f"interface names for {self.n} nodes and pid {pid} exceed {IFNAMSIZ} characters")
            return tag
        raise NetLabError(f"every lab tag for pid {pid} is in use")

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        """10.X.0.0/24 with X from the pid, skipping any /24 the host routes already (such as
        another lab's bridge; two processes picking at the same instant could still clash)."""
        used = _used_subnets()
        start = os.getpid() % 254
        for k in range(254):
            net = ipaddress.IPv4Network(f"10.{(start + k) % 254 + 1}.0.0/24")
            if not any(net.overlaps(other) for other in used):
                return net
        raise NetLabError("no free 10.X.0.0/24 for the lab bridge")

    def _index(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"node {i} is not in this lab of {self.n}")
        return i

    def address(self, i: int) -> str:
        """IPv4 address of node ``i`` (10.X.0.i+1)."""
        return str(self.subnet.network_address + self._index(i) + 1)

    @property
    def root_address(self) -> str:
        """The bridge's address: how the nodes reach the root namespace (the test runner)."""
        return str(self.subnet.network_address + 254)

    def namespace(self, i: int) -> str:
        return self.namespaces[self._index(i)]

    def cmd(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``i``: pass the result to ``subprocess.Popen``."""
        if not argv:
            raise ValueError("an empty command")
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    # -- set-up ---------------------------------------------------------------------------------

    def _ip(self, *args: str) -> str:
        return _run(["ip", *args], timeout=self.timeout)

    def _create(self) -> None:
        prefixlen = str(self.subnet.prefixlen)
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = self.bridge
        self._ip("addr", "add", f"{self.root_address}/{prefixlen}", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for i, (ns, host, inner) in enumerate(zip(self.namespaces, self._host_veths, self._ns_veths)):
            self._ip("netns", "add", ns)
            self._made_namespaces.append(ns)
            self._ip("link", "add", host, "type", "veth", "peer", "name", inner)
            self._made_veths.append(host)
            self._ip("link", "set", inner, "netns", ns)
            self._ip("link", "set", host, "master", self.bridge)
            self._ip("link", "set", host, "up")
            self._ip("-n", ns, "addr", "add", f"{self.address(i)}/{prefixlen}", "dev", inner)
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "link", "set", inner, "up")

    def _forwarding(self, i: int) -> bool:
        """Both ends of node i's veth have carrier and the bridge forwards its port."""
        host = Path("/sys/class/net") / self._host_veths[i]
        try:
            if (host / "carrier").read_text().strip() != "1" or (host / "brport" / "state").read_text().strip() != "3":
                return False
        except OSError:
            return False
        links = _json(["ip", "-n", self.namespaces[i], "-j", "link", "show", "dev", self._ns_veths[i]])
        return bool(links) and links[0].get("operstate") == "UP"

    def _wait_forwarding(self, nodes: range | list[int]) -> None:
        for i in nodes:
            try:
                wait_for(lambda: self._forwarding(i), DEFAULT_LINK_TIMEOUT, what=f"the link of node {i} to forward")
            except AssertionError as e:
                raise NetLabError(str(e)) from e

    # -- cuts -----------------------------------------------------------------------------------

    def _cut(self, i: int, j: int, how: Cut, add: bool) -> None:
        for a, b in ((i, j), (j, i)):
            ns, peer = self.namespaces[a], self.address(b)
            if how == "drop":
                if add:
                    self._ip("-n", ns, "neigh", "replace", peer, "lladdr", SINK_MAC, "nud", "permanent",
                             "dev", self._ns_veths[a])
                else:
                    self._ip("-n", ns, "neigh", "del", peer, "dev", self._ns_veths[a])
            else:
                self._ip("-n", ns, "route", "replace" if add else "del", "unreachable", f"{peer}/32")

    def partition(self, i: int, j: int, *, how: Cut = "drop") -> None:
        """Cut traffic between nodes i and j only, both ways. ``how="drop"`` loses packets
        silently (connections hang); ``how="reject"`` fails them with EHOSTUNREACH."""
        pair = self._pair(i, j)
        if how not in ("drop", "reject"):
            raise ValueError(f"how must be 'drop' or 'reject', not {how!r}")
        if self._cuts.get(pair) == how:
            return
        self.heal(i, j)  # from one kind of cut to the other
        self._cut(i, j, how, add=True)
        self._cuts[pair] = how

    def heal(self, i: int, j: int) -> None:
        """Undo ``partition(i, j)`` (a no-op if they are not partitioned)."""
        pair = self._pair(i, j)
        if pair in self._cuts:
            self._cut(i, j, self._cuts[pair], add=False)
            del self._cuts[pair]

    def isolate(self, i: int) -> None:
        """Cut node i from everyone, root namespace included (its bridge-side veth goes down)."""
        if self._index(i) not in self._isolated:
            self._ip("link", "set", self._host_veths[i], "down")
            self._isolated.add(i)

    def rejoin(self, i: int) -> None:
        """Undo ``isolate(i)``; returns once the bridge forwards node i's traffic again."""
        if self._index(i) in self._isolated:
            self._ip("link", "set", self._host_veths[i], "up")
            self._isolated.discard(i)
            self._wait_forwarding([i])

    def _pair(self, i: int, j: int) -> frozenset[int]:
        if self._index(i) == self._index(j):
            raise ValueError(f"cannot partition node {i} from itself")
        return frozenset((i, j))

    # -- tear-down ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what still runs in the lab's namespaces, delete its veths, namespaces and bridge.
        Idempotent; removes nothing it did not create. Raises NetLabError (after trying every
        step) if something it made could not be removed."""
        if self._closed:
            return
        errors: list[str] = []
        for ns in list(self._made_namespaces):
            self._kill_leftovers(ns, errors)
        # Deleting the root end destroys the pair even while a process keeps the namespace alive.
        for host in list(self._made_veths):
            if self._delete(["ip", "link", "del", host], lambda: host not in _links(), errors):
                self._made_veths.remove(host)
        for ns in list(self._made_namespaces):
            if self._delete(["ip", "netns", "del", ns], lambda: ns not in _namespaces(), errors):
                self._made_namespaces.remove(ns)
        if self._made_bridge is not None:
            bridge = self._made_bridge
            if self._delete(["ip", "link", "del", bridge], lambda: bridge not in _links(), errors):
                self._made_bridge = None
        if errors:
            raise NetLabError("NetLab.close left resources behind:\n" + "\n".join(errors))
        self._closed = True
        self._cuts.clear()
        self._isolated.clear()
        with _lock:
            _live_tags.discard(self.tag)
        atexit.unregister(self.close)

    def _delete(self, argv: list[str], gone: Callable[[], bool], errors: list[str]) -> bool:
        try:
            _run(argv, timeout=self.timeout)
            return True
        except NetLabError as e:
            try:
                if gone():  # already gone (e.g. the veth went with its namespace): fine
                    return True
            except NetLabError:
                pass
            errors.append(str(e))
            return False

    def _kill_leftovers(self, ns: str, errors: list[str]) -> None:
        try:
            pids = [int(p) for p in _run(["ip", "netns", "pids", ns], timeout=self.timeout).split()]
        except NetLabError as e:
            try:
                if ns not in _namespaces():
                    return
            except NetLabError:
                pass
            errors.append(str(e))
            return
        for pid in pids:
            logger.warning("NetLab: killing process %d still running in namespace %s", pid, ns)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "NetLab":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.close()
        except NetLabError:
            if exc_type is None:
                raise
            logger.exception("NetLab: cleanup failed while handling another error")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"bridge {self.bridge} {self.root_address}"
        return f"<NetLab {self.n} nodes in {self.subnet}, {state}>"
