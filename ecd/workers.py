"""Worker subprocesses: spawning, the framed channel, output logging and the orphan registry.

A :class:`WorkerProcess` runs ``ecd/runner.py`` with the python of a processor's virtualenv, in
its own session (so its whole process group can be killed), with a socketpair as the channel
and its stdout/stderr as pipes whose lines are logged on ``ecd.worker.<processor>``. The node's
event loop polls :attr:`WorkerProcess.channel_fd` and :attr:`WorkerProcess.output_fds` and calls
:meth:`~WorkerProcess.read_events` / :meth:`~WorkerProcess.read_output` when they are readable.

Channel frames are a 4-byte big-endian length + a msgpack array (see ``runner.py``). Events
reported to the node are the frozen dataclasses :class:`Ready`, :class:`ImportFailed`,
:class:`Done`, :class:`Raised` and :class:`Exited`.

Threading: call :meth:`WorkerProcess.spawn` from a long-lived thread (the loop thread): the
worker's ``PR_SET_PDEATHSIG`` fires when the *thread* that forked it exits, not only the process.

:class:`ProcessRegistry` records every live worker (pid, process group, kernel start time) in a
JSON file written atomically and fsynced, so a restarted ecd can kill the workers a
``kill -9``'d ecd left behind, without ever killing an unrelated process that reused a pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import msgpack

from ecd.errors import WorkerError

if TYPE_CHECKING:
    from ecd.repos import PreparedCode

__all__ = [
    "Done", "Exited", "ImportFailed", "Item", "ProcessRegistry", "Raised", "Ready", "StreamEnd", "WorkerEvent",
    "WorkerProcess", "make_support_dir", "RUNNER_PATH",
]

log = logging.getLogger(__name__)

#: The script every worker runs.
RUNNER_PATH = Path(__file__).with_name("runner.py")
#: Largest channel frame accepted from a worker; bigger (or garbage) kills the worker.
MAX_FRAME = 256 * 1024 * 1024
#: How long send_call may block on a worker that does not read its channel.
SEND_TIMEOUT = 30.0
#: How long to wait for a worker to exit once its channel reached EOF, before SIGKILL.
EXIT_WAIT = 2.0
#: A partial output line longer than this is logged as is.
MAX_LINE = 64 * 1024
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class Ready:
    """The worker imported the module and waits for calls."""

    pid: int


@dataclass(frozen=True)
class ImportFailed:
    """The module could not be imported; the worker exits next."""

    type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class Done:
    """A call returned; ``value`` is the msgpack of the return value."""

    call_id: str
    value: bytes


@dataclass(frozen=True)
class Raised:
    """A call raised an exception."""

    call_id: str
    type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class Item:
    """A streaming call (a generator) yielded item ``index``; ``value`` is its msgpack."""

    call_id: str
    index: int
    value: bytes


@dataclass(frozen=True)
class StreamEnd:
    """A streaming call's generator is exhausted after ``count`` items (the call is done)."""

    call_id: str
    count: int


@dataclass(frozen=True)
class Exited:
    """The worker process is gone and reaped (``returncode`` as in subprocess: -9 = SIGKILL)."""

    returncode: int


WorkerEvent = Ready | ImportFailed | Done | Raised | Item | StreamEnd | Exited


class FrameError(Exception):
    """A worker sent a frame that is too large or does not decode to a known message."""


def make_support_dir(path: Path) -> Path:
    """Create ``path`` holding a symlink to ecd's own ``msgpack`` package, for the runner."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    target = Path(msgpack.__file__).resolve().parent
    link = path / "msgpack"
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return path
    tmp = path / f".msgpack.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        import shutil  # noqa: PLC0415 - rare path: an old copy

        shutil.rmtree(link)
    os.replace(tmp, link)
    return path


def decode_event(body: bytes) -> WorkerEvent:
    """Decode one worker -> ecd frame body into an event; :class:`FrameError` if invalid."""
    try:
        msg = msgpack.unpackb(body, raw=False)
    except Exception as e:  # noqa: BLE001 - any decode failure is garbage
        raise FrameError(f"undecodable frame: {e}") from None
    if not isinstance(msg, list) or not msg:
        raise FrameError("frame is not an array")
    kind, rest = msg[0], msg[1:]
    shapes: dict[str, tuple[type, tuple[type, ...]]] = {
        "ready": (Ready, (int,)),
        "import_failed": (ImportFailed, (str, str, str)),
        "done": (Done, (str, bytes)),
        "raised": (Raised, (str, str, str, str)),
        "item": (Item, (str, int, bytes)),
        "stream_end": (StreamEnd, (str, int)),
    }
    if kind not in shapes:
        raise FrameError(f"unknown message {kind!r}")
    cls, types = shapes[kind]
    if len(rest) != len(types) or not all(isinstance(v, t) for v, t in zip(rest, types)):
        raise FrameError(f"malformed {kind!r} message")
    return cls(*rest)


class WorkerProcess:
    """One worker subprocess running one processor's module."""

    def __init__(self, *, processor: str, slot: int, code: PreparedCode, module: str,
                 support_dir: Path, registry: ProcessRegistry,
                 on_line: Callable[[int, str, str], None] | None = None) -> None:
        self.processor = processor
        self.slot = slot
        self.code = code
        self.module = module
        self.support_dir = Path(support_dir)
        self.registry = registry
        self.on_line = on_line  # (pid, stream, text) for each line the worker prints
        self.pid: int = 0
        self.channel_fd: int = -1
        self.output_fds: list[int] = []
        self.exit_fd: int = -1  # a pidfd: readable once the process has exited
        self.returncode: int | None = None
        self.log = logging.getLogger(f"ecd.worker.{processor}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._inbuf = bytearray()
        self._partial: dict[int, bytes] = {}
        self._streams: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.processor}[{self.slot}] pid={self.pid}>"

    @property
    def alive(self) -> bool:
        """True between spawn() and the moment the process is known gone."""
        return self._proc is not None and self.returncode is None

    # -- lifecycle --------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the worker process; :class:`WorkerError` if it cannot be started."""
        if self._proc is not None:
            raise WorkerError(f"{self!r} was already spawned")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
        cmd = [str(self.code.python), "-I", "-u", str(RUNNER_PATH), "--fd", str(child_fd),
               "--root", str(self.code.root), "--module", self.module,
               "--support", str(self.support_dir), "--processor", self.processor,
               "--ppid", str(os.getpid())]
        venv_bin = str(Path(self.code.venv) / "bin")
        env = {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "VIRTUAL_ENV": str(self.code.venv),
            "PYTHONUNBUFFERED": "1",
        }
        try:
            proc = subprocess.Popen(
                cmd, pass_fds=(child_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True, env=env,
                cwd=str(self.code.root))
        except OSError as e:
            parent.close()
            raise WorkerError(f"cannot start worker for {self.processor}: {e}") from None
        finally:
            child.close()
        self._proc = proc
        self.pid = proc.pid
        self._sock = parent
        parent.setblocking(False)
        self.channel_fd = parent.fileno()
        assert proc.stdout is not None and proc.stderr is not None
        self.output_fds = [proc.stdout.fileno(), proc.stderr.fileno()]
        self._streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        for fd in self.output_fds:
            os.set_blocking(fd, False)
        # The channel's EOF is not enough to notice an exit: a child forked by user code keeps
        # the channel open. A pidfd becomes readable when this very process exits.
        with contextlib.suppress(OSError, AttributeError):
            self.exit_fd = os.pidfd_open(self.pid)
        try:
            self.registry.add(self.pid)
        except OSError as e:
            self.kill()
            raise WorkerError(f"cannot record worker {self.pid}: {e}") from None
        log.debug("spawned %r", self)

    def send_call(self, call_id: str, function: str, args: bytes, kwargs: bytes) -> None:
        """Send a call to an idle worker; :class:`WorkerError` if the channel is broken."""
        self._send(["call", call_id, function, args, kwargs])

    def send_credit(self, call_id: str, upto: int) -> None:
        """Let a streaming call send its items up to (not including) index ``upto``."""
        self._send(["credit", call_id, upto])

    def kill(self) -> None:
        """SIGKILL the worker's process group, reap it and close its fds (idempotent)."""
        if self._proc is None or self.returncode is not None:
            return
        self._killpg()
        self._reap()

    def stop(self, grace: float) -> None:
        """Ask the worker to exit; SIGKILL it if it is still running after ``grace`` seconds."""
        if self._proc is None or self.returncode is not None:
            return
        with contextlib.suppress(WorkerError):
            self._send(["stop"], timeout=min(grace, SEND_TIMEOUT) or 0.1)
        self._wait_exited(grace)
        self._killpg()
        self._reap()

    # -- reading ----------------------------------------------------------------------------

    def read_events(self, exited: bool = False) -> list[WorkerEvent]:
        """Read what the channel has; return the complete events (Exited last, once). With
        ``exited`` (its exit_fd became readable) the process is known gone: what it wrote is
        read, then it is reaped and Exited is returned even if the channel is still open."""
        if self._sock is None:
            return []
        eof = exited
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("%r: channel error: %s", self, e)
                eof = True
                break
            if not chunk:
                eof = True
                break
            self._inbuf += chunk
            if len(self._inbuf) >= _HEADER.size + MAX_FRAME:
                break
        events: list[WorkerEvent] = []
        try:
            while len(self._inbuf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._inbuf)
                if size > MAX_FRAME:
                    raise FrameError(f"frame of {size} bytes is too large")
                if len(self._inbuf) < _HEADER.size + size:
                    break
                body = bytes(self._inbuf[_HEADER.size:_HEADER.size + size])
                del self._inbuf[:_HEADER.size + size]
                events.append(decode_event(body))
        except FrameError as e:
            log.error("%r sent garbage (%s): killing it", self, e)
            self.kill()
            events.append(Exited(self.returncode if self.returncode is not None else -9))
            return events
        if eof:
            if self._inbuf:
                log.warning("%r: %d bytes of a partial frame at EOF", self, len(self._inbuf))
            self._wait_exited(EXIT_WAIT)
            self._killpg()
            self._reap()
            events.append(Exited(self.returncode if self.returncode is not None else -9))
        return events

    def read_output(self, fd: int) -> None:
        """Log the complete lines available on output ``fd``; at EOF drop it from output_fds."""
        while True:
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._log_line(fd, self._partial.pop(fd, b""))
                if fd in self.output_fds:
                    self.output_fds.remove(fd)
                return
            buf = self._partial.get(fd, b"") + data
            *lines, rest = buf.split(b"\n")
            for line in lines:
                self._log_line(fd, line)
            if len(rest) > MAX_LINE:
                self._log_line(fd, rest)
                rest = b""
            self._partial[fd] = rest

    # -- internals --------------------------------------------------------------------------

    def _log_line(self, fd: int, line: bytes) -> None:
        if not line:
            return
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        stream = self._streams.get(fd, "out")
        self.log.info("[%d] %s", self.pid, text,
                      extra={"worker_pid": self.pid, "stream": stream, "slot": self.slot})
        if self.on_line is not None:
            try:
                self.on_line(self.pid, stream, text)
            except Exception:  # noqa: BLE001 - a listener's trouble must not touch the worker
                log.exception("worker line callback failed")

    def _send(self, msg: list, timeout: float = SEND_TIMEOUT) -> None:
        if self._sock is None:
            raise WorkerError(f"{self!r} is not running")
        body = msgpack.packb(msg, use_bin_type=True)
        data = _HEADER.pack(len(body)) + body
        try:
            sent = self._sock.send(data)  # the socket is non-blocking: the common, cheap case
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise WorkerError(f"cannot send to {self!r}: {e}") from None
        if sent == len(data):
            return
        try:  # the worker's buffer is full: finish with a bounded blocking send
            self._sock.settimeout(timeout)
            self._sock.sendall(data[sent:])
        except (OSError, TimeoutError) as e:
            raise WorkerError(f"cannot send to {self!r}: {e}") from None
        finally:
            with contextlib.suppress(OSError):
                self._sock.setblocking(False)

    def _wait_exited(self, timeout: float) -> bool:
        """Wait until the process has exited (without reaping it); True if it did."""
        if self._proc is None or self._proc.returncode is not None:
            return True
        deadline = time.monotonic() + max(timeout, 0.0)
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(self.pid)
        try:
            while True:
                try:
                    res = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    return True
                if res is not None:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if pidfd >= 0:
                    select.select([pidfd], [], [], left)
                else:
                    time.sleep(min(0.02, left))
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _killpg(self) -> None:
        """SIGKILL the group; safe before reaping (the unreaped leader pins the pid)."""
        if self._proc is None or self._proc.returncode is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError as e:
            log.warning("cannot kill process group %d: %s", self.pid, e)

    def _reap(self) -> None:
        """wait() for the process, drain and close its fds, forget it in the registry."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.wait()
        self.returncode = proc.returncode
        for fd in list(self.output_fds):
            self.read_output(fd)
        for fd, data in list(self._partial.items()):
            self._log_line(fd, data)
        self._partial.clear()
        self.output_fds = []
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.channel_fd = -1
        if self.exit_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.exit_fd)
            self.exit_fd = -1
        try:
            self.registry.remove(self.pid)
        except OSError as e:
            log.warning("cannot update the worker registry: %s", e)
        log.debug("%r exited with %s", self, self.returncode)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return data[data.rfind(")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (field 22 of /proc/<pid>/stat, clock ticks), or None."""
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def _is_running(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in "ZX":
                members.append(int(entry))
    return members


class ProcessRegistry:
    """Durable record of live worker processes, to kill orphans after a crash of ecd."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, int]] = self._load()

    def _load(self) -> dict[str, dict[str, int]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable worker registry %s: %s", self.path, e)
            return {}
        if not isinstance(data, dict):
            return {}
        out = {}
        for pid, rec in data.items():
            if (str(pid).isdigit() and isinstance(rec, dict)
                    and isinstance(rec.get("pgid"), int) and isinstance(rec.get("start"), int)):
                out[str(pid)] = {"pgid": rec["pgid"], "start": rec["start"]}
        return out

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = json.dumps(self._entries, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def pids(self) -> list[int]:
        """The recorded pids."""
        with self._lock:
            return sorted(int(p) for p in self._entries)

    def add(self, pid: int) -> None:
        """Record live process ``pid`` (and its group and start time), durably."""
        start = process_start_time(pid)
        if start is None:
            raise OSError(f"process {pid} is gone")
        pgid = os.getpgid(pid)
        with self._lock:
            self._entries[str(pid)] = {"pgid": pgid, "start": start}
            self._write()

    def remove(self, pid: int) -> None:
        """Forget ``pid``, durably."""
        with self._lock:
            if self._entries.pop(str(pid), None) is not None:
                self._write()

    def kill_orphans(self, wait: float = 5.0) -> list[int]:
        """SIGKILL the recorded groups that still run; return their pids; clear the record.

        A recorded leader counts only if its kernel start time still matches (a reused pid is
        never killed). A group whose leader is gone but whose members live is killed too: the
        kernel does not hand out a pid that is still some group's id, so it is still ours.
        """
        killed: list[int] = []
        own = os.getpgrp()
        with self._lock:
            for pid_s, rec in sorted(self._entries.items()):
                pid, pgid = int(pid_s), rec["pgid"]
                if pgid <= 1 or pgid == own:
                    continue
                start = process_start_time(pid)
                if start is not None and start != rec["start"]:
                    log.info("pid %d was reused; not killing it", pid)
                    continue
                if not _is_running(pid) and not _group_members(pgid):
                    continue  # gone, or a zombie nobody reaped: nothing left to kill
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                except PermissionError as e:
                    log.warning("cannot kill orphan group %d: %s", pgid, e)
                    continue
                log.warning("killed orphaned worker group %d (pid %d)", pgid, pid)
                killed.append(pid)
            self._entries.clear()
            self._write()
        deadline = time.monotonic() + wait
        for pid in killed:  # not our children: we cannot reap them, only see them go
            while _is_running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        return killed
