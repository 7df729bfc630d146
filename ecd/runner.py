"""Worker process body: runs a processor's functions inside the processor's virtualenv.

This is a standalone script, started by ``ecd.workers.WorkerProcess`` as
``<venv>/bin/python -I -u runner.py --fd N --root DIR --module M --support DIR``. It imports
only the standard library and ``msgpack`` (taken from the user's virtualenv when installed
there, else from the support dir that ecd provides, which goes last on ``sys.path``). It must
never import ``ecd`` or ``protocol``.

Channel (socket fd ``N``): frames of a 4-byte big-endian length + a msgpack array.

    ecd -> worker   ["call", call_id, function, args_bytes, kwargs_bytes]   ["stop"]
                    ["credit", call_id, upto]
    worker -> ecd   ["ready", pid]   ["import_failed", type, message, traceback]
                    ["done", call_id, value_bytes]   ["raised", call_id, type, message, traceback]
                    ["item", call_id, index, value_bytes]   ["stream_end", call_id, count]

A function that returns a generator streams: each yielded item goes out as ``item`` as soon as
it is made, then ``stream_end`` (ecd composes the call's result, the list of the items). The
worker sends item ``index`` only while ``index < upto`` of the last ``credit`` for the call
(its first item goes unasked: :data:`STREAM_WINDOW`): when ecd holds back credit (a slow reader, a full
downstream queue) the generator is simply not advanced. Calls that arrive meanwhile (ecd may
queue a few behind the running one) wait their turn.

User output (print, logging) goes to the process's stdout/stderr, which ecd reads as log lines;
the channel is only written by this script. Exit codes: 0 on ``stop``/EOF, 3 when the module
cannot be imported, 4 when the parent died before we could arm ``PR_SET_PDEATHSIG``, 2 on a
broken channel.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import signal
import socket
import struct
import sys
import traceback
from typing import Any

#: Largest frame accepted from the parent.
MAX_FRAME = 256 * 1024 * 1024
#: Largest packed result sent back (leaves room for the envelope).
MAX_RESULT = MAX_FRAME - 4096
#: Items a streaming call may send before ecd's first credit.
STREAM_WINDOW = 1
#: prctl option number of PR_SET_PDEATHSIG (linux/prctl.h).
PR_SET_PDEATHSIG = 1

EXIT_IMPORT_FAILED = 3
EXIT_ORPHANED = 4
EXIT_CHANNEL = 2


class ChannelError(Exception):
    """The channel to ecd is broken or carried garbage."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line given by ecd."""
    p = argparse.ArgumentParser(prog="ecd-runner")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--module", required=True)
    p.add_argument("--support", required=True)
    p.add_argument("--processor", default="")
    p.add_argument("--ppid", type=int, default=0, help="pid of ecd, to detect an early death")
    return p.parse_args(argv)


def set_pdeathsig(expected_ppid: int) -> bool:
    """Ask the kernel to SIGKILL us when our parent dies; False if it is already gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not linux, no libc: best effort
        pass
    return not (expected_ppid and os.getppid() != expected_ppid)


def setup_path(root: str, support: str) -> None:
    """The checkout first, the support dir (msgpack) last; drop our own directory."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    sys.path.insert(0, root)
    sys.path.append(support)


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Read exactly ``n`` bytes; None on EOF before the first byte."""
    chunks = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise ChannelError("EOF inside a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, msgpack: Any) -> list | None:
    """Read one frame; None on a clean EOF."""
    head = recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME:
        raise ChannelError(f"frame of {size} bytes is too large")
    body = recv_exact(sock, size) if size else b""
    if body is None:
        raise ChannelError("EOF inside a frame")
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001 - any decode error means garbage
        raise ChannelError(f"undecodable frame: {e}") from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise ChannelError("frame is not a message array")
    return msg


def send_frame(sock: socket.socket, msgpack: Any, msg: list) -> None:
    """Write one frame."""
    body = msgpack.packb(msg, use_bin_type=True)
    sock.sendall(struct.pack(">I", len(body)) + body)


def flush_output() -> None:
    """Flush the user's stdout/stderr so their lines reach ecd promptly."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - user may have replaced or closed them
            pass


class Channel:
    """The worker's side of the channel: frames in and out, and the messages that arrived while
    a streaming call waited for credit (kept for later, in order)."""

    def __init__(self, sock: socket.socket, msgpack: Any) -> None:
        self.sock = sock
        self.msgpack = msgpack
        self.later: list[list] = []
        self.stopped = False

    def recv(self) -> list | None:
        if self.later:
            return self.later.pop(0)
        return recv_frame(self.sock, self.msgpack)

    def send(self, msg: list) -> None:
        send_frame(self.sock, self.msgpack, msg)

    def wait_credit(self, call_id: str, index: int, upto: int) -> int:
        """Block until ecd lets item ``index`` go; returns the new bound (0: stop streaming)."""
        while index >= upto:
            msg = recv_frame(self.sock, self.msgpack)
            if msg is None or msg[0] == "stop":
                self.stopped = True
                return 0
            if msg[0] == "credit" and len(msg) == 3 and msg[1] == call_id and isinstance(msg[2], int):
                upto = max(upto, msg[2])
            elif msg[0] == "call":
                self.later.append(msg)
        return upto


def stream(channel: Channel, msgpack: Any, call_id: str, function: str, items: Any) -> list:
    """Send the items of a generator as they come, within ecd's credit; the reply to send last."""
    upto = STREAM_WINDOW
    index = 0
    for item in items:
        flush_output()
        value = pack_value(msgpack, item, call_id, f"item {index} of {function}")
        if isinstance(value, list):
            return value  # it cannot be sent: the call fails with that
        upto = channel.wait_credit(call_id, index, upto)
        if not upto:
            return ["raised", call_id, "Stopped", "the worker was stopped during the stream", ""]
        channel.send(["item", call_id, index, value])
        index += 1
    return ["stream_end", call_id, index]


def run_call(module: Any, msgpack: Any, msg: list, channel: Channel | None = None) -> list:
    """Execute one ``call`` message and return the reply message."""
    try:
        _, call_id, function, args_b, kwargs_b = msg
    except ValueError:
        return ["raised", "", "ValueError", "malformed call message", ""]
    call_id = str(call_id)
    try:
        if not isinstance(function, str) or not function:
            raise AttributeError(f"invalid function name {function!r}")
        fn = getattr(module, function, None)
        if fn is None or not callable(fn):
            raise AttributeError(f"module {module.__name__!r} has no function {function!r}")
        args = msgpack.unpackb(args_b, raw=False, strict_map_key=False) if args_b else []
        kwargs = msgpack.unpackb(kwargs_b, raw=False, strict_map_key=False) if kwargs_b else {}
        if not isinstance(args, list | tuple):
            raise TypeError(f"args of {function} must be a list, not {type(args).__name__}")
        if not isinstance(kwargs, dict):
            raise TypeError(f"kwargs of {function} must be a map, not {type(kwargs).__name__}")
        result = fn(*args, **kwargs)
        if inspect.isgenerator(result):
            if channel is None:
                result = list(result)
            else:
                return stream(channel, msgpack, call_id, function, result)
    except BaseException as e:  # noqa: BLE001 - user code may raise anything, even SystemExit
        return ["raised", call_id, type(e).__name__, safe_str(e), traceback.format_exc()]
    value = pack_value(msgpack, result, call_id, f"result of {function}")
    return value if isinstance(value, list) else ["done", call_id, value]


def pack_value(msgpack: Any, value: Any, call_id: str, what: str) -> bytes | list:
    """The msgpack of a value to send, or the ``raised`` reply when it cannot be sent."""
    try:
        packed = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        return ["raised", call_id, "TypeError", f"{what} is not serialisable: {safe_str(e)}", traceback.format_exc()]
    if len(packed) > MAX_RESULT:
        return ["raised", call_id, "ValueError", f"{what} is too large ({len(packed)} bytes)", ""]
    return packed


def safe_str(e: BaseException) -> str:
    """``str(e)``, even for exceptions whose ``__str__`` fails."""
    try:
        return str(e)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(e).__name__}>"


def main(argv: list[str] | None = None) -> int:
    """Run the worker; returns the process exit code."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if not set_pdeathsig(opts.ppid):
        return EXIT_ORPHANED
    setup_path(opts.root, opts.support)
    import msgpack  # noqa: PLC0415 - only importable once the support dir is on sys.path

    sock = socket.socket(fileno=opts.fd)
    sock.setblocking(True)
    if tuple(getattr(msgpack, "version", (0,)))[:1] < (1,):  # the user's venv has an old one
        send_frame(sock, msgpack, ["import_failed", "ImportError",
                                   f"msgpack >= 1.0 is required in the virtualenv, found "
                                   f"{getattr(msgpack, 'version', '?')}", ""])
        return EXIT_IMPORT_FAILED
    try:
        module = importlib.import_module(opts.module)
    except BaseException as e:  # noqa: BLE001 - SyntaxError, SystemExit, anything
        flush_output()
        send_frame(sock, msgpack, ["import_failed", type(e).__name__, safe_str(e),
                                   traceback.format_exc()])
        return EXIT_IMPORT_FAILED
    flush_output()
    channel = Channel(sock, msgpack)
    channel.send(["ready", os.getpid()])
    while True:
        try:
            msg = channel.recv()
        except ChannelError as e:
            print(f"ecd-runner: {e}", file=sys.stderr, flush=True)
            return EXIT_CHANNEL
        if msg is None or msg[0] == "stop":
            return 0
        if msg[0] == "credit":
            continue  # for a stream that has ended
        if msg[0] != "call":
            print(f"ecd-runner: ignoring unknown message {msg[0]!r}", file=sys.stderr, flush=True)
            continue
        try:
            reply = run_call(module, msgpack, msg, channel)
            flush_output()
            channel.send(reply)
        except ChannelError as e:
            print(f"ecd-runner: {e}", file=sys.stderr, flush=True)
            return EXIT_CHANNEL
        except (OSError, ValueError) as e:
            print(f"ecd-runner: cannot send reply: {e}", file=sys.stderr, flush=True)
            return EXIT_CHANNEL
        if channel.stopped:
            return 0


if __name__ == "__main__":
    sys.exit(main())
