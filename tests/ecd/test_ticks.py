"""Tick times of scheduled sockets (ecd.ticks.Schedule): the same on every node."""

from __future__ import annotations

import pytest

from ecd.ticks import Schedule, tick_id


@pytest.mark.parametrize("interval, cron, start, end, expected", [
    (0.5, None, 10.0, 11.6, [10.5, 11.0, 11.5]),
    (60.0, None, 0.0, 59.0, []),
    (None, "* * * * * */15", 100.0, 135.0, [105.0, 120.0, 135.0]),
])
def test_schedule_tick_times(interval: float | None, cron: str | None, start: float, end: float,
                             expected: list[float]) -> None:
    schedule = Schedule(interval, cron)
    assert schedule.between(start, end, 100) == expected
    assert schedule.between(start, end, 2) == expected[-2:]
    if expected:
        assert schedule.latest(end) == expected[-1]
        assert schedule.next(expected[0] - 0.001) == expected[0]


def test_tick_ids_name_the_socket_and_the_tick() -> None:
    assert tick_id("s", 10.5) == tick_id("s", 10.5)
    assert len({tick_id("s", 10.5), tick_id("s", 11.0), tick_id("t", 10.5)}) == 3
