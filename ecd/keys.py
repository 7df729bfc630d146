"""The node's CURVE key pair: made at first start under ``<data-dir>/keys/``, read at every start.

``keys/node.key`` holds the public key and ``keys/node.key_secret`` the secret one, in ZeroMQ's
certificate format (written and read by :mod:`zmq.auth`). The folder is 0700 and the secret file
0600 whatever the umask or the data dir's mode: the secret is made inside the private folder, so no
other user can ever read it, and its mode is checked at every start. ``ecd keys show`` prints the
public key (Z85, 40 characters), which peers and clients pin.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from .errors import ConfigError

#: Name of the key files in the keys folder.
KEY_NAME = "node"


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair; ``public`` and ``secret`` are Z85 (bytes, as pyzmq takes them)."""

    public: bytes
    secret: bytes

    @property
    def public_text(self) -> str:
        return self.public.decode("ascii")


def keys_dir(data_dir: Path) -> Path:
    return data_dir / "keys"


def load_or_create(data_dir: Path) -> tuple[KeyPair, bool]:
    """The node's key pair, made now when there is none; returns it and whether it is new."""
    folder = keys_dir(data_dir)
    public, secret = folder / f"{KEY_NAME}.key", folder / f"{KEY_NAME}.key_secret"
    created = False
    if not secret.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        zmq.auth.create_certificates(folder, KEY_NAME)
        created = True
    os.chmod(folder, 0o700)
    os.chmod(secret, 0o600)
    return _read(public, secret), created


def load(data_dir: Path) -> KeyPair:
    """The node's key pair; ConfigError when it was never made."""
    folder = keys_dir(data_dir)
    secret = folder / f"{KEY_NAME}.key_secret"
    if not secret.exists():
        raise ConfigError(f"no key pair in {folder}: start ecd once (or run `ecd keys init`) to make it")
    return _read(folder / f"{KEY_NAME}.key", secret)


def _read(public: Path, secret: Path) -> KeyPair:
    mode = stat.S_IMODE(secret.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{secret} is readable by others (mode {mode:o}); it must be 0600")
    try:
        pub, sec = zmq.auth.load_certificate(secret)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the node's key pair in {secret.parent}: {exc}") from exc
    if not pub or not sec:
        raise ConfigError(f"{secret} holds no secret key")
    pub_file, _ = zmq.auth.load_certificate(public) if public.exists() else (pub, None)
    if pub_file != pub:
        raise ConfigError(f"{public} does not match {secret}")
    return KeyPair(public=pub, secret=sec)


def curve_keypair() -> KeyPair:
    """A fresh key pair (tests, clients)."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public, secret=secret)
