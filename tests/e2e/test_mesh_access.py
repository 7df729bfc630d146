"""Trust across a mesh (issue #12): nodes admit each other by registered key, a client that knows
one node's key fails over to the others, a logout holds on every node at once, and a node whose key
is revoked is refused until an operator admits it again."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecctl import Client, ServerError, UnknownServerKey
from ecctl.trust import KnownNodes
from tests.conftest import admin_password
from tests.mesh import MeshNodes
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pair(venv_cache: Path) -> Iterator[MeshNodes]:
    base = Path(tempfile.mkdtemp(prefix="ec-meshacc-"))
    nodes = MeshNodes(base, venv_cache, n=2)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_knowing_one_key_is_enough_and_a_logout_holds_everywhere(pair: MeshNodes, tmp_path: Path) -> None:
    password = admin_password(*(n.data_dir for n in pair.nodes))
    endpoints = ",".join(pair.tcp)
    folder = tmp_path / "client"
    KnownNodes(folder).trust(pair.tcp[0], pair.nodes[0].key)  # only n1's key
    with Client(endpoints, config_dir=folder, timeout=30) as client:
        with pytest.raises(ServerError) as info:
            client.status()
        assert info.value.code == 401
        client.login("admin", password)
        assert KnownNodes(folder).get(pair.tcp[1]) == pair.nodes[1].key  # learned from n1
        nodes = {n["name"]: n for n in client.ls("nodes")}
        assert {name: n.get("key") for name, n in nodes.items()} == {"n1": pair.nodes[0].key, "n2": pair.nodes[1].key}
        pair.nodes[0].kill9()
        assert client.status()["node"] == "n2"  # failed over to a node it learned the key of
        pair.nodes[0].start()
        pair.wait_formed()
    # logged in through n1, logged out through n2: n1 refuses the key at once
    with Client(pair.tcp[1], config_dir=folder, timeout=30) as at_n2, \
            Client(pair.tcp[0], config_dir=folder, timeout=30) as at_n1:
        assert at_n1.whoami()["user"] == "admin"
        assert at_n2.logout()["logged_out"] is True
        with pytest.raises(ServerError) as info:
            at_n1.whoami()
        assert info.value.code == 401
    with Client(pair.tcp[1], config_dir=tmp_path / "stranger", timeout=5) as stranger, \
            pytest.raises(UnknownServerKey):
        stranger.ping()


def test_a_revoked_node_is_refused_until_admitted_again(pair: MeshNodes) -> None:
    n2 = pair.nodes[1]
    key = n2.key
    with pair.client(0) as n1:
        n1.delete("node", "n2")  # revoked: its key cannot come back by itself
        wait_for(lambda: pair.states(0).get("n2") == "dead", 30, what="n1 to refuse n2")
        n2.terminate()
        n2.start()
        wait_for(lambda: "peers refuse it" in n2.log(), 30, what="n2 to be told its key is refused")
        assert pair.states(0).get("n2") == "dead"
        assert "n2" not in {n["name"] for n in n1.ls("nodes") if n.get("state") == "alive"}
        n1.add("node", name="n2", key=key, endpoint=pair.tcp[1])  # an operator admits it again
        pair.wait_formed()
