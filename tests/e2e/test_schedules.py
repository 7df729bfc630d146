"""Scheduled sockets on a real node: an interval socket fires each tick once; after the node
was down, the missed ticks fire once (``--catch-up once``, the default) or once each
(``--catch-up all``); a cron socket follows its expression; bad schedules are refused."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from ecctl import Client, ServerError
from tests.conftest import register_sample, run_ecctl
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

INTERVAL = 0.5


def _ticks(client: Client, socket: str) -> list[dict[str, Any]]:
    calls = client.ls_calls(rows=500, socket=socket)["calls"]
    return sorted(calls, key=lambda c: c["via"])


def _times(calls: list[dict[str, Any]]) -> list[float]:
    """Tick times from the calls' provenance (``tick 2026-...Z``), in seconds."""
    from datetime import datetime
    return [datetime.fromisoformat(c["via"].split(" ", 1)[1].replace("Z", "+00:00")).timestamp() for c in calls]


def test_missed_ticks_fire_once_or_once_each(ecd_factory: Any, sample_repo: str) -> None:
    node = ecd_factory("ticks", cpus=2)
    with Client(node.endpoint, timeout=30) as c:
        register_sample(c, sample_repo)
        out = run_ecctl(node.endpoint, "add", "socket", "-n", "every.once", "-q", "q1", "-pn", "proc1", "-t", "noop",
                        "--interval", str(INTERVAL))
        assert out.returncode == 0, out.stderr.decode()
        out = run_ecctl(node.endpoint, "add", "socket", "-n", "every.all", "-q", "q1", "-pn", "proc1", "-t", "noop",
                        "--interval", str(INTERVAL), "--catch-up", "all")
        assert out.returncode == 0, out.stderr.decode()
        wait_for(lambda: len(_ticks(c, "every.once")) >= 3 and len(_ticks(c, "every.all")) >= 3, 30,
                 what="a few ticks")
    assert node.terminate() == 0
    down = time.time()
    wait_for(lambda: time.time() > down + 6 * INTERVAL, 10, what="ticks missed while the node is down")
    node.start()
    with Client(node.endpoint, timeout=30) as c:
        wait_for(lambda: any(t > down + 8 * INTERVAL for t in _times(_ticks(c, "every.once"))), 30,
                 what="ticks after the restart")
        once = _ticks(c, "every.once")
        times = _times(once)
        assert len(set(times)) == len(times)  # no tick fired twice
        gaps = [round((b - a) / INTERVAL) for a, b in zip(times, times[1:])]
        assert max(gaps) >= 6 and gaps.count(max(gaps)) == 1, gaps  # the downtime: one call for it
        catch_up = once[gaps.index(max(gaps)) + 1]
        note = c.ls_call(catch_up["id"])["events"][0]["note"]
        assert re.search(r"covers (\d+) missed tick", note) and int(re.search(r"covers (\d+)", note).group(1)) >= 5
        assert all(g == 1 for g in gaps if g != max(gaps)), gaps
        wait_for(lambda: max(_times(_ticks(c, "every.all"))) >= max(times), 10, what="every.all caught up")
        every = _times(_ticks(c, "every.all"))
        assert len(set(every)) == len(every)
        assert [round((b - a) / INTERVAL) for a, b in zip(every, every[1:])] == [1] * (len(every) - 1)
        assert all(c.result(call["id"], timeout=30) is None for call in _ticks(c, "every.all"))  # each ran


def test_a_cron_socket_follows_its_expression(ecd_factory: Any, sample_repo: str) -> None:
    node = ecd_factory("cron", cpus=2)
    with Client(node.endpoint, timeout=30) as c:
        register_sample(c, sample_repo)
        c.add_socket("cron.noop", processor="proc1", function="noop", queue="q1")
        with pytest.raises(ServerError, match="invalid cron"):
            c.update("socket", "cron.noop", cron="61 * * * *")
        with pytest.raises(ServerError, match="invalid interval 0.05"):  # at least 0.1 s
            c.update("socket", "cron.noop", interval=0.05)
        out = run_ecctl(node.endpoint, "update", "socket", "-n", "cron.noop", "--interval", "1e-300")
        assert out.returncode == 2 and "--interval" in out.stderr.decode()
        with pytest.raises(ServerError, match="mutually exclusive"):
            c.update("socket", "cron.noop", cron="* * * * * */2", interval=5)
        c.update("socket", "cron.noop", cron="* * * * * */2")  # every 2 seconds (seconds last)
        wait_for(lambda: len(_ticks(c, "cron.noop")) >= 2, 20, what="two cron ticks")
        times = _times(_ticks(c, "cron.noop"))
        assert all(t % 2 == 0 for t in times) and times[1] - times[0] == 2
