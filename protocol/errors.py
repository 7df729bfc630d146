"""Errors raised by the protocol package.

Hierarchy::

    ValueError
     └── ProtocolError            bad frames, bad msgpack, bad field, over a limit
          └── UnsupportedVersion  header names a version we do not speak (code E_VERSION)

Every ProtocolError carries a human ``reason``, an error ``code`` (E_* from constants, ready
to be sent back in an ERROR reply), the ``request_id`` when it could be read, and the raw
``data`` that failed; the underlying exception is chained as ``__cause__``.
"""

from __future__ import annotations

from .constants import E_MALFORMED, E_VERSION, SUPPORTED_VERSIONS


class ProtocolError(ValueError):
    """A message or payload could not be encoded or decoded."""

    def __init__(self, reason: str, *, code: int = E_MALFORMED, request_id: bytes = b"",
                 data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.request_id = request_id
        self.data = data

    def __str__(self) -> str:
        return f"{self.reason} (code {self.code})"


class UnsupportedVersion(ProtocolError):
    """The header's version byte is not in SUPPORTED_VERSIONS."""

    def __init__(self, reason: str, *, version: int, request_id: bytes = b"", data: bytes = b"",
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> None:
        super().__init__(reason, code=E_VERSION, request_id=request_id, data=data)
        self.version = version
        self.versions = versions
