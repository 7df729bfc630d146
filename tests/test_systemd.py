"""Tests for the shipped deployment artifacts: the systemd unit (structure, commented hardening,
``systemd-analyze verify``), the example ecd.toml, and the bundled sample processor source."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "ecd.service"
CONFIG = ROOT / "systemd" / "ecd.toml"
SAMPLE = ROOT / "examples" / "sample"

pytestmark = pytest.mark.timeout(120)

#: Seconds any subprocess of these tests may take.
SUBPROCESS_TIMEOUT = 60

#: Sandboxing/privilege directives; each must sit right below a comment explaining it.
HARDENING = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ReadWritePaths",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "RestrictSUIDSGID",
    "RestrictRealtime",
    "RestrictNamespaces",
    "LockPersonality",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "RestrictAddressFamilies",
    "UMask",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "RemoveIPC",
)

Entry = tuple[str, str, int]  # key, value, line index


def parse_unit(text: str) -> dict[str, list[Entry]]:
    """Parse a unit file into section -> [(key, value, line index)], keeping repeated keys."""
    sections: dict[str, list[Entry]] = {}
    current: list[Entry] | None = None
    for index, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"line {index + 1} outside a section: {raw!r}"
        assert "=" in line, f"line {index + 1} is not KEY=VALUE: {raw!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip(), index))
    return sections


def single(section: list[Entry], key: str) -> str:
    """The value of ``key`` in ``section``, which must appear exactly once."""
    values = [value for name, value, _ in section if name == key]
    assert len(values) == 1, f"{key} appears {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span of plain seconds or with one s/min suffix."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.fixture(scope="module")
def unit_text() -> str:
    return UNIT.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def unit(unit_text: str) -> dict[str, list[Entry]]:
    return parse_unit(unit_text)


def test_sections(unit: dict[str, list[Entry]]) -> None:
    assert set(unit) == {"Unit", "Service", "Install"}
    assert single(unit["Install"], "WantedBy") == "multi-user.target"


def test_service_basics(unit: dict[str, list[Entry]]) -> None:
    service = unit["Service"]
    assert single(service, "Type") == "notify"
    assert single(service, "NotifyAccess") == "main"
    assert single(service, "User") == "ec"
    assert single(service, "Group") == "ec"
    assert single(service, "StateDirectory") == "ec"
    assert single(service, "StateDirectoryMode") == "0750"
    assert single(service, "Restart") == "on-failure"
    assert single(service, "KillMode") == "mixed"
    assert single(service, "UMask") == "0027"
    assert single(service, "CapabilityBoundingSet") == ""
    assert "/var/lib/ec" in single(service, "ReadWritePaths").split()
    assert int(single(service, "LimitNOFILE")) >= 4096
    families = single(service, "RestrictAddressFamilies").split()
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    exec_start = single(service, "ExecStart").split()
    assert exec_start[:2] == ["/usr/local/bin/ecd", "run"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/ec/ecd.toml"
    assert exec_start[exec_start.index("--data-dir") + 1] == "/var/lib/ec"


def test_timeouts_fit_ecd(unit: dict[str, list[Entry]]) -> None:
    from ecd.config import DEFAULT_GRACE

    service = unit["Service"]
    assert seconds(single(service, "WatchdogSec")) == 30
    # systemd must not SIGKILL ecd while it is still draining its workers.
    assert seconds(single(service, "TimeoutStopSec")) > DEFAULT_GRACE + 10
    assert tomllib.loads(CONFIG.read_text(encoding="utf-8"))["grace"] < seconds(
        single(service, "TimeoutStopSec")
    )


def test_every_hardening_directive_is_commented(
    unit_text: str, unit: dict[str, list[Entry]]
) -> None:
    lines = unit_text.splitlines()
    present = {key for key, _, _ in unit["Service"]}
    missing = [key for key in HARDENING if key not in present]
    assert not missing, f"hardening directives missing: {missing}"
    for key, _, index in unit["Service"]:
        if key in HARDENING:
            assert index > 0 and lines[index - 1].lstrip().startswith("#"), (
                f"{key} (line {index + 1}) is not preceded by a comment"
            )


def test_memory_deny_write_execute_is_off_with_reason(
    unit_text: str, unit: dict[str, list[Entry]]
) -> None:
    assert all(key != "MemoryDenyWriteExecute" for key, _, _ in unit["Service"])
    lines = unit_text.splitlines()
    commented = [i for i, line in enumerate(lines) if line.startswith("#MemoryDenyWriteExecute")]
    assert len(commented) == 1
    assert lines[commented[0] - 1].startswith("#"), "no reason given for leaving it off"


def _tolerated(line: str) -> bool:
    """Messages that only say the sandbox lacks the dedicated ``ec`` user or group."""
    lower = line.lower()
    return bool(re.search(r"\b(user|group)\b", lower)) and bool(re.search(r"\bec\b", lower))


def _verify(unit_file: Path) -> tuple[int, list[str]]:
    """Run ``systemd-analyze verify`` on ``unit_file``; return (exit code, output lines)."""
    env = {**os.environ, "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0"}
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
        cwd=unit_file.parent,
    )
    return proc.returncode, [line for line in (proc.stdout + proc.stderr).splitlines() if line]


@pytest.fixture
def verifiable_unit(tmp_path: Path, unit_text: str) -> Iterator[Path]:
    """A copy of the unit whose ExecStart names an executable that exists here."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    exec_start = f"ExecStart={sys.executable} -c pass"
    text, count = re.subn(r"(?m)^ExecStart=.*$", lambda _: exec_start, unit_text)
    assert count == 1
    path = tmp_path / "ecd.service"
    path.write_text(text, encoding="utf-8")
    yield path


def _problems(unit_file: Path, lines: list[str]) -> list[str]:
    """Output lines about our unit that are not tolerated."""
    return [
        line
        for line in lines
        if (unit_file.name in line or str(unit_file.parent) in line) and not _tolerated(line)
    ]


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    code, lines = _verify(verifiable_unit)
    problems = _problems(verifiable_unit, lines)
    assert not problems, "\n".join(problems)
    if code != 0:
        assert lines and all(_tolerated(line) for line in lines), "\n".join(lines)


def test_systemd_analyze_verify_catches_mistakes(verifiable_unit: Path) -> None:
    """The check above is not vacuous: a misspelt directive is reported."""
    text = verifiable_unit.read_text(encoding="utf-8")
    verifiable_unit.write_text(text.replace("ProtectClock=", "ProtectClok="), encoding="utf-8")
    _, lines = _verify(verifiable_unit)
    assert any("ProtectClok" in line for line in _problems(verifiable_unit, lines)), lines


def test_example_config_loads() -> None:
    from ecd.config import load_config

    data = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    assert set(data) <= {"data_dir", "listen", "db", "name", "cpus", "log_level", "grace",
                         "venv_dir", "result_ttl", "map_size", "topology_poll", "prepare_retry"}
    config = load_config(config_file=CONFIG, environ={})
    assert config.data_dir == Path("/var/lib/ec")
    assert config.listen == ("tcp://127.0.0.1:5555",)
    assert config.insecure is False  # the example is the secure setup


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``sample.tasks`` imported the way a worker does: checkout root on the import path."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # keep the shipped tree clean
    monkeypatch.syspath_prepend(str(SAMPLE))
    for name in ("sample.tasks", "sample"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import sample.tasks

    assert Path(sample.tasks.__file__).resolve().parent.parent == SAMPLE.resolve()
    return sample.tasks


def test_sample_is_plain_source() -> None:
    for name in (".git", "setup.py", "pyproject.toml", "setup.cfg"):
        assert not (SAMPLE / name).exists(), name
    assert (SAMPLE / "README.md").is_file()
    assert "ecctl add processor" in (SAMPLE / "README.md").read_text(encoding="utf-8")


def test_sample_functions(tasks: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert tasks.do_something("hello") == "Do something: hello"
    assert "hello" in capsys.readouterr().out
    assert tasks.do_this(3) == "Do this: 3"
    assert tasks.add_two(1, 2) == 3
    assert tasks.add_two("a", "b") == "ab"
    assert tasks.echo(1, "x", k=[2]) == {"args": [1, "x"], "kwargs": {"k": [2]}}
    with pytest.raises(ValueError, match="boom"):
        tasks.fail()
    with pytest.raises(ValueError, match="custom"):
        tasks.fail("custom")
    assert tasks.sleep(0) == 0
    assert tasks.noop(1, a=2) is None
    assert tasks.pid() == os.getpid()


def test_sample_crash_exits_the_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-B", "-c", "import sample.tasks as t; t.crash(7); print('survived')"],
        cwd=SAMPLE,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 7
    assert "survived" not in proc.stdout
