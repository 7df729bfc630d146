"""What a client trusts and who it is: the nodes' public keys, and the client's own CURVE key pair.

Everything lives in the config folder: ``EC_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/ec``, else
``~/.config/ec`` (made 0700):

* ``known_nodes``: one ``ENDPOINT KEY`` line per node (0600), written by ``ecctl trust ENDPOINT KEY``
  and by what a trusted node says of the other members of its mesh (so a failover list works once
  one node's key is known). A key given with ``--server-key`` / ``EC_SERVER_KEY`` is the first
  endpoint's and wins over the file.
* ``client.key`` / ``client.key_secret``: the client's key pair, made at first use (the secret
  0600). ``ecctl login`` binds it to a user on the daemons: from then on every request from this
  key acts as that user, until the login expires or ``ecctl logout``.

Keys are Z85 text (40 characters), as ``ecd keys show`` prints them. Files are read with
:mod:`zmq.auth` (the client key pair) and as plain lines (``known_nodes``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

import protocol

from .errors import EcctlError, UnknownServerKey

__all__ = ["ClientKeys", "KnownNodes", "UnknownServerKey", "client_keys", "config_dir", "curve_client", "is_key"]

log = logging.getLogger(__name__)

KNOWN_NODES = "known_nodes"
CLIENT_KEY = "client"


def is_key(text: object) -> bool:
    return isinstance(text, str) and protocol.CURVE_KEY_RE.fullmatch(text) is not None


def config_dir() -> Path:
    """The client's config folder (not made here)."""
    explicit = os.environ.get("EC_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ec"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class KnownNodes:
    """The ``known_nodes`` file of a config folder: endpoint -> key."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or config_dir()
        self.path = self.folder / KNOWN_NODES

    def load(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise EcctlError(f"cannot read {self.path}: {exc.strerror}") from exc
        known: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2 or not is_key(parts[1]):
                log.warning("%s:%d: ignoring a line that is not `ENDPOINT KEY`", self.path, number)
                continue
            known[parts[0]] = parts[1]
        return known

    def get(self, endpoint: str) -> str | None:
        return self.load().get(endpoint)

    def save(self, known: dict[str, str]) -> None:
        """Write the file atomically, 0600."""
        _private_dir(self.folder)
        lines = ["# ElasticCode: the public keys of the nodes this client trusts (ecctl trust ENDPOINT KEY)"]
        lines += [f"{endpoint} {key}" for endpoint, key in sorted(known.items())]
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".known_nodes.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def trust(self, endpoint: str, key: str) -> str | None:
        """Remember ``key`` for ``endpoint``; returns the key it replaces, if another."""
        if not is_key(key):
            raise EcctlError(f"{key[:60]!r} is not a node key: expected the 40 characters `ecd keys show` prints")
        if not endpoint.startswith("tcp://"):
            raise EcctlError(f"{endpoint!r} is not a tcp:// endpoint (ipc needs no key)")
        known = self.load()
        old = known.get(endpoint)
        known[endpoint] = key
        self.save(known)
        return old if old != key else None

    def learn(self, entries: dict[str, str]) -> int:
        """Keys a trusted node gave for other endpoints: kept where none is known yet (a key the
        user trusted is never replaced by hearsay). Returns how many were new."""
        known = self.load()
        new = {endpoint: key for endpoint, key in entries.items()
               if endpoint.startswith("tcp://") and is_key(key) and endpoint not in known}
        if new:
            known.update(new)
            self.save(known)
        return len(new)


@dataclass(frozen=True)
class ClientKeys:
    """The client's CURVE key pair (Z85 bytes, as pyzmq takes them)."""

    public: bytes
    secret: bytes

    @property
    def public_text(self) -> str:
        return self.public.decode("ascii")


def client_keys(folder: Path | None = None) -> ClientKeys:
    """The client's key pair from the config folder, made there (secret 0600) the first time."""
    folder = _private_dir(folder or config_dir())
    secret_file = folder / f"{CLIENT_KEY}.key_secret"
    if not secret_file.exists():
        # made aside and moved in whole (secret last): two clients starting at once never read
        # half a file, and the first one's pair stays
        scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".keys."))
        try:
            zmq.auth.create_certificates(scratch, CLIENT_KEY)
            os.chmod(scratch / f"{CLIENT_KEY}.key_secret", 0o600)
            if not secret_file.exists():
                os.replace(scratch / f"{CLIENT_KEY}.key", folder / f"{CLIENT_KEY}.key")
                os.link(scratch / f"{CLIENT_KEY}.key_secret", secret_file)
        except FileExistsError:
            pass  # another client made it first
        finally:
            for leftover in scratch.iterdir():
                leftover.unlink()
            scratch.rmdir()
    os.chmod(secret_file, 0o600)
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise EcctlError(f"cannot read the client key pair {secret_file}: {exc}") from exc
    if not secret:
        raise EcctlError(f"{secret_file} holds no secret key")
    return ClientKeys(public=public, secret=secret)


def curve_client(sock: zmq.Socket, keys: ClientKeys, server_key: str) -> None:
    """Make ``sock`` (before connect) a CURVE client of the node whose key is ``server_key``."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_key.encode("ascii")
