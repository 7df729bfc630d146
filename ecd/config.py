"""Daemon configuration: one frozen dataclass, built from defaults, a TOML file, the environment
and the command line, in that order of precedence (each later source overrides the earlier).

Environment variables: ``EC_DATA_DIR``, ``EC_LISTEN`` (comma-separated), ``EC_DB``, ``EC_NAME``,
``EC_CPUS``, ``EC_VENV_DIR``, ``EC_LOG_LEVEL``, ``EC_GRACE``, ``EC_HISTORY`` (``on``/``off``),
``EC_HISTORY_RETENTION`` (seconds), ``EC_TOPOLOGY_POLL`` (seconds), ``EC_JOIN`` (comma-separated
seed endpoints), ``EC_ADVERTISE``, ``EC_REPLICAS``, ``EC_REQUIRE_REPLICAS`` (``on``/``off``),
``EC_HEARTBEAT`` (seconds), ``EC_INSECURE`` (``on``: plain tcp, no authentication),
``EC_INSECURE_BIND_ANY`` (``on``: allow that on a non-loopback address), ``EC_SESSION_TTL``
(seconds a login lasts).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

#: Where state lives when nothing else is said (systemd's StateDirectory=ec).
DEFAULT_DATA_DIR = Path("/var/lib/ec")
#: Seconds running calls get to finish after SIGTERM before they are requeued.
DEFAULT_GRACE = 30.0
#: Seconds a finished call (and its result) stays in the log.
DEFAULT_RESULT_TTL = 24 * 3600.0
#: Initial LMDB map size; it grows by itself when full.
DEFAULT_MAP_SIZE = 256 << 20
#: Seconds between topology change checks (SQLite change counter).
DEFAULT_TOPOLOGY_POLL = 1.0
#: Seconds finished calls stay in the database's call history.
DEFAULT_HISTORY_RETENTION = 7 * 86400.0
#: Seconds between call history batches.
DEFAULT_HISTORY_INTERVAL = 0.5
#: Seconds before a failed processor's code is prepared again.
DEFAULT_PREPARE_RETRY = 60.0
#: Seconds between a node's heartbeats to its peers (suspect after 3 missed, dead after 5).
DEFAULT_HEARTBEAT = 0.5
#: Seconds a login (``ecctl login``) lasts before the client must log in again.
DEFAULT_SESSION_TTL = 12 * 3600.0

ENV_PREFIX = "EC_"
#: A peer endpoint: ``tcp://HOST:PORT`` (HOST a name, an IPv4 address or ``[IPv6]``).
TCP_ENDPOINT_RE = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


def is_peer_endpoint(text: str) -> bool:
    """True for a ``tcp://HOST:PORT`` endpoint with a port in 1..65535."""
    match = TCP_ENDPOINT_RE.fullmatch(text) if isinstance(text, str) and len(text) <= 300 else None
    return bool(match) and 0 < int(match.group(2)) < 65536


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``tcp://`` endpoints on a loopback address (127.0.0.0/8, ::1, localhost)."""
    match = TCP_ENDPOINT_RE.fullmatch(endpoint)
    if not match:
        return False
    host = match.group(1).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    """Everything ``ecd run`` needs to start a node."""

    data_dir: Path = DEFAULT_DATA_DIR
    listen: tuple[str, ...] = ()
    db: str = ""
    name: str = ""
    cpus: int = 0
    venv_dir: Path | None = None
    grace: float = DEFAULT_GRACE
    result_ttl: float = DEFAULT_RESULT_TTL
    map_size: int = DEFAULT_MAP_SIZE
    topology_poll: float = DEFAULT_TOPOLOGY_POLL
    prepare_retry: float = DEFAULT_PREPARE_RETRY
    history: bool = True
    history_retention: float = DEFAULT_HISTORY_RETENTION
    history_interval: float = DEFAULT_HISTORY_INTERVAL
    log_level: str = "INFO"
    join: tuple[str, ...] = ()
    advertise: str = ""
    replicas: int = 0  # 0: automatic (2 when two or more nodes are alive, else 1)
    require_replicas: bool = False
    heartbeat: float = DEFAULT_HEARTBEAT
    insecure: bool = False            # plain tcp: no CURVE, no authentication (loud warnings)
    insecure_bind_any: bool = False   # with insecure: allow a non-loopback tcp --listen
    session_ttl: float = DEFAULT_SESSION_TTL

    @property
    def ipc_endpoint(self) -> str:
        """The local clients' endpoint, always served: ``ipc://<data-dir>/ecd.sock``."""
        return f"ipc://{self.data_dir / 'ecd.sock'}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.ipc_endpoint, *self.listen)

    @property
    def peer_endpoint(self) -> str:
        """The endpoint peers reach this node on: ``--advertise``, else the first tcp ``--listen``
        endpoint that names a host (a wildcard address needs ``--advertise``); "" without one."""
        if self.advertise:
            return self.advertise
        for endpoint in self.listen:
            if endpoint.startswith("tcp://") and not endpoint.startswith(("tcp://0.0.0.0:", "tcp://*:")):
                return endpoint
        return ""


def _coerce(name: str, value: Any) -> Any:
    """Turn a raw value from TOML, env or CLI into the field's type, or raise ConfigError."""
    try:
        if name in ("data_dir", "venv_dir"):
            return Path(str(value)).expanduser().resolve() if value not in (None, "") else None
        if name in ("listen", "join"):
            if isinstance(value, str):
                value = [value]
            items = tuple(v for part in value for v in (p.strip() for p in str(part).split(",")) if v)
            for item in items:
                if not item.startswith(("tcp://", "ipc://")):
                    raise ConfigError(f"{name}: {item!r} is not a tcp:// or ipc:// endpoint")
                if name == "join" and not is_peer_endpoint(item):
                    raise ConfigError(f"join: {item!r} is not a tcp://HOST:PORT endpoint")
            return items
        if name == "advertise":
            text = str(value).strip()
            if text and not is_peer_endpoint(text):
                raise ConfigError(f"advertise: {text!r} is not a tcp://HOST:PORT endpoint")
            return text
        if name in ("cpus", "map_size", "replicas"):
            number = int(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        if name in ("history", "require_replicas", "insecure", "insecure_bind_any"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected on or off")
        if name in ("grace", "result_ttl", "topology_poll", "prepare_retry", "history_retention", "history_interval",
                    "heartbeat", "session_ttl"):
            number = float(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {value!r} is not valid ({exc})") from exc


def load_config(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the node's configuration: defaults, then ``config_file``, then ``environ``, then
    ``overrides`` (command-line values; ``None`` means not given)."""
    environ = os.environ if environ is None else environ
    known = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        data = data.get("ecd", data)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config file {config_file}: unknown keys {', '.join(unknown)}")
        values.update(data)
    for name in known:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value not in (None, ""):
            values[name] = env_value
    for name, value in (overrides or {}).items():
        if value is not None and value != ():
            values[name] = value
    coerced = {name: _coerce(name, value) for name, value in values.items()}
    config = Config(**{k: v for k, v in coerced.items() if v is not None})
    if not config.db:
        config = replace(config, db=f"sqlite:///{config.data_dir / 'topology.db'}")
    if not config.name:
        config = replace(config, name=socket.gethostname())
    if not config.cpus:
        config = replace(config, cpus=os.cpu_count() or 1)
    if config.heartbeat < 0.05:
        raise ConfigError("heartbeat: must be at least 0.05 seconds")
    if config.session_ttl < 1:
        raise ConfigError("session_ttl: must be at least 1 second")
    if config.insecure and not config.insecure_bind_any:
        exposed = [e for e in config.listen if e.startswith("tcp://") and not is_loopback_endpoint(e)]
        if exposed:
            raise ConfigError(f"--insecure on {', '.join(exposed)} would let anyone on the network run code here: "
                              "listen on a loopback address, drop --insecure, or add --insecure-bind-any")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: {config.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return config
