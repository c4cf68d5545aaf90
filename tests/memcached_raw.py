"""Memcached's text protocol by hand: what a Go program writes and reads, byte for byte.

The Go reference uses gomemcache: ``set <key> 0 0 <len>`` for a new route (flags 0, no
TTL), ``gets`` then ``cas <key> <old flags> 0 <len> <cas>`` to take a key over, and
``get``, of which it uses the value only. The meta command ``mg`` shows what the
classic protocol hides: an entry's remaining TTL (-1: none).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawEntry:
    value: bytes
    flags: int
    cas: int


@dataclass(frozen=True)
class Meta:
    #: Seconds left; -1 when the entry never expires.
    ttl: int
    flags: int
    cas: int


class RawMemcached:
    """One blocking connection to a real memcached (loopback answers in microseconds)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._sock = socket.create_connection((host, int(port)), timeout=5)
        self._buf = b""

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawMemcached:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("memcached closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._buf += self._sock.recv(65536)
        data, self._buf = self._buf[:n], self._buf[n + 2 :]
        return data

    def storage(self, command: str, key: str, value: bytes, flags: int = 0, exptime: int = 0,
                cas: int | None = None) -> bytes:  # fmt: skip
        """``set``/``add``/``cas``...; returns the reply line (``STORED``, ``EXISTS``...)."""
        head = f"{command} {key} {flags} {exptime} {len(value)}"
        if cas is not None:
            head += f" {cas}"
        self._sock.sendall(head.encode() + b"\r\n" + value + b"\r\n")
        return self._line()

    def set(self, key: str, value: bytes, flags: int = 0, exptime: int = 0) -> None:
        """What gomemcache's ``Set`` sends for a new route (flags 0, exptime 0)."""
        assert self.storage("set", key, value, flags, exptime) == b"STORED"

    def get_line(self, key: str) -> tuple[bytes, bytes] | None:
        """The raw ``VALUE`` line and data of ``get``, as a Go client parses them."""
        self._sock.sendall(f"get {key}\r\n".encode())
        line = self._line()
        if line == b"END":
            return None
        length = int(line.split()[3])
        data = self._exactly(length)
        assert self._line() == b"END"
        return line, data

    def gets(self, key: str) -> RawEntry | None:
        self._sock.sendall(f"gets {key}\r\n".encode())
        line = self._line()
        if line == b"END":
            return None
        _, _, flags, length, cas = line.split()
        data = self._exactly(int(length))
        assert self._line() == b"END"
        return RawEntry(data, int(flags), int(cas))

    def meta(self, key: str) -> Meta | None:
        """Remaining TTL, flags and CAS of ``key`` (meta get, memcached >= 1.6)."""
        self._sock.sendall(f"mg {key} t f c\r\n".encode())
        line = self._line()
        if line.startswith(b"EN"):
            return None
        fields = {part[:1]: part[1:] for part in line.split()[1:]}
        return Meta(ttl=int(fields[b"t"]), flags=int(fields[b"f"]), cas=int(fields[b"c"]))


def meta_of(raw: RawMemcached, key: str) -> Meta:
    meta = raw.meta(key)
    assert meta is not None, key
    return meta


def entry_of(raw: RawMemcached, key: str) -> RawEntry:
    entry = raw.gets(key)
    assert entry is not None, key
    return entry
