"""Build and run the clean-room Go test peer (tests/go_peer/, see docs/interop.md).

The binary is built once per source version into
``~/.cache/reverse-http-tests/go-peer-<hash>/go-peer`` (the hash covers go.mod, go.sum,
the .go files and the Go version), so only the first run pays for the build. Without Go, or
when the module proxy cannot deliver quic-go and golang-jwt, the tests using it skip
with the reason; a compile error fails them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SOURCE_DIR = Path(__file__).parent / "go_peer"
SOURCES = ("go.mod", "go.sum", "main.go", "swarm.go")
BUILD_TIMEOUT = 600.0
#: stderr of ``go build``/``go install`` that means "no modules from the network".
_FETCH_FAILURE = re.compile(
    r"proxy\.golang\.org|dial tcp|no such host|i/o timeout|TLS handshake|403 Forbidden"
    r"|410 Gone|404 Not Found|connection refused|network is unreachable|GOPROXY|GOFLAGS=-mod"
)


def go_executable() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.exists() else None


def go_env(**extra: str) -> dict[str, str]:
    """The environment for go commands: module mode, no VCS stamping, no toolchain fetch."""
    env = dict(os.environ)
    env.update({"GOFLAGS": "-mod=mod -buildvcs=false", "GOTOOLCHAIN": "local"})
    env.update(extra)
    return env


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reverse-http-tests"


@dataclass(frozen=True)
class Build:
    binary: Path
    seconds: float  # 0.0 when the cached binary was used
    cached: bool


class GoUnavailable(Exception):
    """No Go toolchain, or its modules cannot be fetched: callers skip (or say so)."""


class GoBuildFailed(Exception):
    """The Go peer does not compile: a real failure."""


def build_binary() -> Build:
    """The go-peer binary, built if this source version has none yet (no pytest needed)."""
    go = go_executable()
    if go is None:
        raise GoUnavailable("Go is not installed (need go >= 1.21 on PATH or /usr/local/go/bin/go)")
    version = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=30, env=go_env()
    ).stdout.strip()
    digest = hashlib.sha256(version.encode())
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    binary = cache_root() / f"go-peer-{digest.hexdigest()[:16]}" / "go-peer"
    if binary.exists():
        return Build(binary, 0.0, cached=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".go-peer.{os.getpid()}")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=SOURCE_DIR,
            env=go_env(),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raise GoUnavailable(
            f"go build of tests/go_peer took over {BUILD_TIMEOUT:.0f}s (module proxy?)"
        ) from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = done.stderr.strip()[-1500:]
        if _FETCH_FAILURE.search(tail):
            raise GoUnavailable(f"cannot fetch the Go peer's modules: {tail}")
        raise GoBuildFailed(f"go build of tests/go_peer failed:\n{tail}")
    os.replace(partial, binary)
    return Build(binary, time.monotonic() - started, cached=False)


def build_go_peer() -> Build:
    """The go-peer binary; skips without Go or its modules, fails on a compile error."""
    try:
        return build_binary()
    except GoUnavailable as exc:
        pytest.skip(str(exc))
    except GoBuildFailed as exc:
        pytest.fail(str(exc))


_EVENT = re.compile(r'(\w[\w-]*)="((?:[^"\\]|\\.)*)"')


def parse_event(line: str) -> dict[str, str]:
    """``... event=NAME k="v" ...`` -> {"event": NAME, "k": "v", ...} (Go-quoted values)."""
    _, _, rest = line.partition("event=")
    name, _, fields = rest.partition(" ")
    event = {"event": name.strip()}
    for key, value in _EVENT.findall(fields):
        event[key] = value.encode().decode("unicode_escape")
    return event


@dataclass
class Process:
    """A process whose stdout and stderr go to ``<log_dir>/<name>.log``."""

    name: str
    args: list[str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, str]]:
        found = [parse_event(line) for line in self.log().splitlines() if "event=" in line]
        return [e for e in found if name is None or e["event"] == name]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, text: str, timeout: float = 15.0, *, count: int = 1) -> str:
        """Wait until ``text`` appears ``count`` times in the log; fail early if it exits."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if not self.running():
                log = self.log()  # it may have written the line just before exiting
                if log.count(text) >= count:
                    return log
                raise AssertionError(f"{self.name} exited before logging {text!r}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not log {text!r} in {timeout}s:\n{log[-3000:]}"
                )
            time.sleep(0.02)

    def wait_event(self, name: str, timeout: float = 15.0, **fields: str) -> dict[str, str]:
        """The first ``event=name`` whose fields include ``fields``, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(name):
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            exited = not self.running()
            if exited or time.monotonic() > deadline:
                for event in self.events(name):  # written just before exiting
                    if all(event.get(k) == v for k, v in fields.items()):
                        return event
                how = "exited" if exited else f"did not log it in {timeout}s"
                raise AssertionError(
                    f"{self.name} {how}: event={name} {fields}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass(kw_only=True)
class ProcessGroup:
    """The processes one test started, logging into ``workdir``; stopped newest first."""

    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Process:
        """Start ``name-N`` (N: how many were started before it, so names stay unique)."""
        process = Process(f"{name}-{len(self.processes)}", args, self.workdir)
        self.processes.append(process)
        return process.start()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log()[-4000:]}" for p in self.processes)

    def assert_no_traceback(self, prefix: str) -> None:
        """None of the processes named ``prefix...`` (ours) logged a Python traceback."""
        ours = [p for p in self.processes if p.name.startswith(prefix)]
        assert not any("Traceback" in p.log() for p in ours), self.logs()
