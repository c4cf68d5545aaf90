"""The userspace link emulator (``linkemu.c``) from Python: build it, run it, enter namespaces.

Used by ``bench/wan.py`` and ``tests/test_wan.py``. Needs root (network namespaces
and TUN devices), ``ip`` (iproute2) and ``gcc``; :func:`unavailable` says which of
these is missing, for a clear skip.

Topology: two network namespaces, side A (``10.201.0.1``) and side B
(``10.201.0.2``), joined by one ``linkemu`` process that owns both TUN devices.
Each side also has its own loopback. :func:`netns` moves the calling thread into a
namespace for a ``with`` block: sockets opened and processes started inside it
live there (this process's other threads are not affected).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "linkemu.c"
ADDR_A = "10.201.0.1"
ADDR_B = "10.201.0.2"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def unavailable() -> str | None:
    """Why the emulator cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (TUN driver missing or not exposed to this container)"
    for tool, package in (("ip", "iproute2"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install {package})"
    probe = f"lecheck{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def build(cache: Path | None = None) -> Path:
    """Compile ``linkemu.c`` once per source version into ``cache`` (default: a temp dir)."""
    return _compile(SOURCE, "linkemu", [], cache)


def build_tcpcc(cache: Path | None = None) -> Path:
    """Compile the ``tcpcc.so`` LD_PRELOAD shim (per-socket TCP congestion control)."""
    return _compile(SOURCE.with_name("tcpcc.c"), "tcpcc.so", ["-shared", "-fPIC", "-ldl"], cache)


def _compile(source: Path, stem: str, flags: list[str], cache: Path | None) -> Path:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    where = cache or Path(tempfile.gettempdir()) / "reverse-http-linkemu"
    where.mkdir(parents=True, exist_ok=True)
    exe = where / f"{digest}-{stem}"
    if not exe.exists():
        tmp = where / f".{digest}-{stem}.{os.getpid()}"
        cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(source), *flags]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {source.name} failed:\n{done.stderr}")
        tmp.replace(exe)  # atomic: concurrent builders both end with a whole file
    return exe


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``name`` (``ip netns`` name)."""
    target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back home: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)


@contextlib.contextmanager
def namespaces(tag: str) -> Iterator[tuple[str, str]]:
    """Two fresh network namespaces (side A, side B), deleted at the end."""
    names = (f"rh-{tag}-a-{os.getpid()}", f"rh-{tag}-b-{os.getpid()}")
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            made.append(name)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass(frozen=True)
class LinkSpec:
    """One emulated path. ``rtt_ms`` is split evenly between the two directions."""

    rtt_ms: float = 0.0
    rate_mbit: float = 0.0  # 0: unlimited
    loss: float = 0.0  # probability per packet, each direction
    path_mtu: int = 0  # 0: the device MTU (1500)
    icmp: bool = True  # answer oversized DF packets with "fragmentation needed"
    queue_bytes: int = 0  # 0: one bandwidth-delay product (at least 64 KiB)
    seed: int = 1

    def args(self) -> list[str]:
        args = [f"--delay-ms={self.rtt_ms / 2}", f"--seed={self.seed}"]
        if self.rate_mbit:
            args.append(f"--rate-mbit={self.rate_mbit}")
        if self.loss:
            args.append(f"--loss={self.loss}")
        if self.path_mtu:
            args.append(f"--path-mtu={self.path_mtu}")
            if self.icmp:
                args.append("--icmp")
        if self.queue_bytes:
            args.append(f"--queue-bytes={self.queue_bytes}")
        return args

    def label(self) -> str:
        parts = [f"{self.rtt_ms:g} ms"]
        if self.loss:
            parts.append(f"{self.loss * 100:g}% loss")
        if self.rate_mbit:
            rate = self.rate_mbit
            parts.append(f"{rate / 1000:g} Gbit/s" if rate >= 1000 else f"{rate:g} Mbit/s")
        if self.path_mtu:
            parts.append(f"MTU {self.path_mtu}" + ("" if self.icmp else " (ICMP filtered)"))
        return ", ".join(parts)


class Link:
    """A running ``linkemu`` between namespaces ``ns_a`` and ``ns_b``.

    ``outage()`` toggles the link down/up, ``rebind()`` moves side B's UDP source
    ports (a NAT losing its mapping); ``stop()`` returns the counters.
    """

    def __init__(self, exe: Path, ns_a: str, ns_b: str, spec: LinkSpec, log: Path) -> None:
        self.spec = spec
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(exe), f"--ns-a={ns_a}", f"--ns-b={ns_b}", *spec.args()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.proc.wait(timeout=10)
            raise RuntimeError(f"linkemu did not start: {log.read_text(errors='replace')[-800:]}")
        self.counters: dict[str, Any] = {}

    def outage(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def rebind(self) -> None:
        self.proc.send_signal(signal.SIGUSR2)

    def snapshot(self) -> dict[str, Any]:
        """The counters so far, the link still running (SIGHUP makes it print them)."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGHUP)
        line = self.proc.stdout.readline()
        self.counters = json.loads(line) if line.startswith("{") else {}
        return self.counters

    def stop(self) -> dict[str, Any]:
        """End the emulator (once; later calls return the same counters)."""
        if self.proc.stdout is None or self.proc.stdout.closed:
            return self.counters
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        self.counters = json.loads(lines[-1]) if lines else {}
        return self.counters

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def drops(counters: dict[str, Any]) -> dict[str, int]:
    """Drops of both directions by reason (loss, queue, mtu, outage, ring, write)."""
    total: dict[str, int] = {}
    for side in ("a_to_b", "b_to_a"):
        for key, value in counters.get(side, {}).items():
            if key.startswith("drop_"):
                total[key[5:]] = total.get(key[5:], 0) + int(value)
    return total
