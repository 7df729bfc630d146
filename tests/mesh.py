"""Several real ecd processes forming one mesh on this machine, for the multi-node tests.

Node i (1-based) listens on ``tcp://127.0.0.i:<free port>`` with its own data dir, all share one
SQLite topology file, and each joins through node 1. Every node is stopped by its PID at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ecctl import Client
from tests.conftest import EcdProcess, processor_view, register_sample
from tests.waiting import wait_for

#: Heartbeat interval of test meshes (a node is dead after 5 missed beats).
HEARTBEAT = 0.5


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class MeshNodes:
    """``n`` ecd nodes in one mesh; ``nodes[i]`` is node ``n{i+1}``."""

    def __init__(self, base: Path, venv_dir: Path, n: int = 3, cpus: int = 2, extra: tuple[str, ...] = (),
                 lab: Any = None) -> None:
        """With ``lab`` (a :class:`tests.netns.NetLab`), node i runs in the lab's namespace i on
        the lab's address i; clients still reach every node through its ipc endpoint."""
        self.base = base
        self.db = f"sqlite:///{base / 'topology.db'}"
        self.nodes: list[EcdProcess] = []
        self.names: list[str] = []
        self.tcp: list[str] = []
        for i in range(n):
            if lab is not None:
                endpoint = f"tcp://{lab.address(i)}:7800"
            else:
                address = f"127.0.0.{i + 1}"
                endpoint = f"tcp://{address}:{free_port_on(address)}"
            name = f"n{i + 1}"
            self.tcp.append(endpoint)
            self.names.append(name)
        for i in range(n):
            args = ("--name", self.names[i], "--db", self.db, "--heartbeat", str(HEARTBEAT),
                    "--join", self.tcp[0] if i else ",".join(self.tcp[1:]) or self.tcp[0], *extra)
            wrap = tuple(lab.cmd(i, ["ecd"])[:-1]) if lab is not None else ()
            self.nodes.append(EcdProcess(base / self.names[i], venv_dir, cpus=cpus, listen=self.tcp[i], extra=args,
                                         wrap=wrap))

    def start(self) -> "MeshNodes":
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        self.wait_formed()
        return self

    def run_sample(self, repo: str) -> None:
        """Register the example processor through node 1 and return once it runs, with all its
        sockets known, on every node."""
        with self.client(0, timeout=60) as client:
            register_sample(client, repo)
        for i in range(1, len(self.nodes)):
            with self.client(i, timeout=30) as client:
                wait_for(lambda: processor_view(client, "proc1").get("status") == "running"
                         and "sample.tasks.token" in {s["name"] for s in client.status()["sockets"]},
                         180, what=f"proc1 running on {self.names[i]}")

    def client(self, i: int, **kwargs: Any) -> Client:
        return Client(self.nodes[i].endpoint, **kwargs)

    def tcp_client(self, endpoints: str, **kwargs: Any) -> Client:
        """A Client for tcp ``endpoints`` of this mesh: every node's key trusted, logged in as the
        mesh's admin (the one user the first start made in the shared database)."""
        from tests.conftest import admin_password, trust

        for endpoint, node in zip(self.tcp, self.nodes):
            trust(endpoint, node.data_dir)
        return Client(endpoints, user="admin", password=admin_password(*(n.data_dir for n in self.nodes)), **kwargs)

    def all_endpoints(self, first: int = 0, ipc: bool = False) -> str:
        """Every node's tcp (or ipc) endpoint, node ``first`` first (a failover list)."""
        endpoints = [node.endpoint for node in self.nodes] if ipc else self.tcp
        order = endpoints[first:] + endpoints[:first]
        return ",".join(order)

    def status(self, i: int) -> dict[str, Any]:
        with self.client(i, timeout=5.0, connect_timeout=5.0) as client:
            return client.status()

    def states(self, i: int) -> dict[str, str]:
        """Node name -> state, as node ``i`` sees the mesh."""
        status = self.status(i)
        states = {m["name"]: m["state"] for m in status["mesh"]["nodes"]}
        states[status["node"]] = status["state"]
        return states

    def wait_formed(self, timeout: float = 30.0, among: list[int] | None = None) -> None:
        """Until each running node sees every other running one alive."""
        among = list(range(len(self.nodes))) if among is None else among
        names = {self.names[i] for i in among}

        def formed() -> bool:
            for i in among:
                states = self.states(i)
                if any(states.get(name) != "alive" for name in names):
                    return False
            return True

        wait_for(formed, timeout, what=f"mesh of {sorted(names)} formed")

    def explain(self, call_id: str) -> str:
        """What every node knows of ``call_id`` and its log lines about it (for failure messages)."""
        lines = []
        for i, node in enumerate(self.nodes):
            try:
                with self.client(i, timeout=5.0, connect_timeout=5.0) as client:
                    record = client.ls_call(call_id)
                events = [(e["name"], e["note"]) for e in record.get("events", [])]
                lines.append(f"{self.names[i]}: owner={record.get('owner')} state={record.get('state')} {events}")
            except Exception as exc:  # noqa: BLE001 - a node without the call, or a stopped one
                lines.append(f"{self.names[i]}: {exc}")
            lines += [f"  {line}" for line in node.log().splitlines()
                      if call_id in line or "ecd.cluster" in line or "ecd.mesh" in line
                      or "Traceback" in line or "Error" in line or "failed" in line][-25:]
        return "\n".join(lines)

    def fired_ticks(self, socket: str) -> list[str]:
        """Every "fired Tick <time> of <socket>" line of every node's log: who fired which tick
        (a tick fired by two nodes shows twice)."""
        return [tick for ticks in self.fired_ticks_by_node(socket).values() for tick in ticks]

    def fired_ticks_by_node(self, socket: str) -> dict[str, list[str]]:
        """Node name -> the ticks of ``socket`` it fired, in order."""
        fired = {}
        for name, node in zip(self.names, self.nodes):
            text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
            fired[name] = [line.split("fired Tick ", 1)[1].split(" ")[0] for line in text.splitlines()
                           if "fired Tick " in line and line.split(" of ")[-1].split(" ")[0] == socket]
        return fired

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@contextlib.contextmanager
def sample_mesh(prefix: str, venv_dir: Path, repo: str, **options: Any) -> Iterator[MeshNodes]:
    """Three nodes in one mesh with the example processor running on each; all stopped by their
    PIDs and their temp dir removed at the end."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    nodes = MeshNodes(base, venv_dir, **options)
    try:
        nodes.start()
        nodes.run_sample(repo)
        yield nodes
    finally:
        nodes.cleanup()
        shutil.rmtree(base, ignore_errors=True)
