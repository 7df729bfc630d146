"""ecd.stats.HostStats with the real psutil: percentages in range, never raising, cached."""

from __future__ import annotations

import logging
from pathlib import Path

import psutil
import pytest

from ecd.stats import HostStats

pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_sample_has_the_three_percentages_in_range(tmp_path: Path) -> None:
    sample = HostStats(tmp_path).sample()
    assert set(sample) == {"load", "memory", "disk"}
    for key, value in sample.items():
        assert isinstance(value, float), key
        assert 0.0 <= value <= 100.0, (key, value)
        assert value == round(value, 1), (key, value)
    assert sample["memory"] > 0.0  # a running machine uses some memory
    assert sample["disk"] > 0.0  # and the file system holding tmp_path holds something


def test_disk_is_the_file_system_of_the_data_dir(tmp_path: Path) -> None:
    expected = psutil.disk_usage(str(tmp_path)).percent
    assert HostStats(tmp_path).sample()["disk"] == pytest.approx(expected, abs=1.0)


def test_a_missing_data_dir_reads_zero_disk_and_does_not_raise(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ecd.stats")
    sample = HostStats(tmp_path / "not" / "there").sample()
    assert sample["disk"] == 0.0
    assert 0.0 < sample["memory"] <= 100.0
    assert any("disk" in record.getMessage() for record in caplog.records)


def test_a_failing_psutil_call_reads_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise psutil.AccessDenied()

    stats = HostStats(tmp_path)
    monkeypatch.setattr(psutil, "virtual_memory", broken)
    monkeypatch.setattr(psutil, "cpu_percent", broken)
    sample = stats.sample()
    assert sample["memory"] == 0.0 and sample["load"] == 0.0
    assert sample["disk"] > 0.0


def test_two_calls_within_a_second_return_the_cached_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = HostStats(tmp_path)  # real clock: two calls in a row are well within a second
    first = stats.sample()
    calls: list[str] = []
    monkeypatch.setattr(psutil, "virtual_memory", lambda: calls.append("virtual_memory"))
    assert stats.sample() == first
    assert calls == []  # psutil was not asked again


def test_the_cache_expires_after_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    stats = HostStats(tmp_path, clock=clock)
    stats.sample()
    reads: list[int] = []
    real = psutil.virtual_memory

    def counting() -> object:
        reads.append(1)
        return real()

    monkeypatch.setattr(psutil, "virtual_memory", counting)
    clock.now += 0.999
    stats.sample()
    assert reads == []
    clock.now += 0.001
    stats.sample()
    assert reads == [1]


def test_the_returned_dict_is_a_copy(tmp_path: Path) -> None:
    stats = HostStats(tmp_path)
    stats.sample()["load"] = 123.0
    assert stats.sample()["load"] <= 100.0
