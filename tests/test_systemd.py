"""systemd integration: sd_notify messages on a real socket, the watchdog task, the units.

The notifier is exercised against an AF_UNIX datagram socket the test binds itself
(what systemd does), so the exact bytes on the wire are checked, not a mock's calls.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from reverse_http.cli import options
from reverse_http.durations import parse_duration
from reverse_http.systemd import Notifier, run_watchdog

UNIT_DIR = Path(__file__).resolve().parent.parent / "docs" / "systemd"
DAEMONS = ("proxy", "agent", "lb")
# sockaddr_un.sun_path is 108 bytes including the NUL.
_MAX_SUN_PATH = 100


# ----------------------------------------------------------------------- helpers


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[Path]:
    """A short enough socket path: tmp_path itself when it fits in sun_path."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield path
        return
    short = Path(tempfile.mkdtemp(prefix="rh-sd-"))
    try:
        yield short / "notify.sock"
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def notify_sock(notify_path: Path) -> Iterator[socket.socket]:
    """The 'systemd' end: a bound, non-blocking datagram socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fsencode(notify_path))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on ``sock`` right now (the sender never blocks or defers)."""
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def make_notifier(path: Path, **extra: str) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": str(path), **extra})


# ------------------------------------------------------------------- messages


def test_ready_exact_bytes(notify_path: Path, notify_sock: socket.socket) -> None:
    with make_notifier(notify_path) as n:
        assert n.enabled
        n.ready()
    assert received(notify_sock) == [b"READY=1"]


def test_ready_with_status_is_one_datagram(notify_path: Path, notify_sock: socket.socket) -> None:
    with make_notifier(notify_path) as n:
        n.ready(status="listening on :3128 (http) and :4242 (agents)")
    assert received(notify_sock) == [
        b"READY=1\nSTATUS=listening on :3128 (http) and :4242 (agents)"
    ]


def test_ready_is_sent_once(notify_path: Path, notify_sock: socket.socket) -> None:
    with make_notifier(notify_path) as n:
        n.ready("first")
        n.ready("second")
        n.ready()
    assert received(notify_sock) == [b"READY=1\nSTATUS=first"]


def test_stopping_status_and_utf8(notify_path: Path, notify_sock: socket.socket) -> None:
    with make_notifier(notify_path) as n:
        n.stopping()
        n.stopping("draining 3 sessions")
        n.status("agent 4711 connected — ok")
    assert received(notify_sock) == [
        b"STOPPING=1",
        b"STOPPING=1\nSTATUS=draining 3 sessions",
        "STATUS=agent 4711 connected — ok".encode(),
    ]


def test_status_newlines_cannot_inject_assignments(
    notify_path: Path, notify_sock: socket.socket
) -> None:
    with make_notifier(notify_path) as n:
        n.status("bad\nREADY=1")
    assert received(notify_sock) == [b"STATUS=bad READY=1"]


def test_watchdog_ping_and_interval(notify_path: Path, notify_sock: socket.socket) -> None:
    with make_notifier(notify_path, WATCHDOG_USEC="30000000") as n:
        assert n.watchdog_interval == 15.0
        n.watchdog_ping()
        n.watchdog_ping()
    assert received(notify_sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_watchdog_pid_ours(notify_path: Path, notify_sock: socket.socket) -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    with make_notifier(notify_path, **env) as n:
        assert n.watchdog_interval == 1.0
        n.watchdog_ping()
    assert received(notify_sock) == [b"WATCHDOG=1"]


def test_watchdog_pid_mismatch_disables_watchdog(
    notify_path: Path, notify_sock: socket.socket
) -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    with make_notifier(notify_path, **env) as n:
        assert n.watchdog_interval is None
        n.watchdog_ping()
        n.ready()  # the rest still works: only the watchdog belongs to another process
    assert received(notify_sock) == [b"READY=1"]


@pytest.mark.parametrize("usec", ["", "0", "-5", "abc", "1.5"])
def test_invalid_watchdog_usec_disables_watchdog(
    notify_path: Path, notify_sock: socket.socket, usec: str
) -> None:
    with make_notifier(notify_path, WATCHDOG_USEC=usec) as n:
        assert n.watchdog_interval is None
        n.watchdog_ping()
    assert received(notify_sock) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux")
def test_abstract_socket() -> None:
    name = f"reverse-http-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.setblocking(False)
        with Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}) as n:
            n.ready("up")
        assert received(sock) == [b"READY=1\nSTATUS=up"]


def test_without_notify_socket_everything_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sockets(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("no socket may be created without NOTIFY_SOCKET")

    n = Notifier.from_environ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    monkeypatch.setattr(socket, "socket", no_sockets)
    assert not n.enabled
    assert n.watchdog_interval is None
    n.ready("x")
    n.stopping()
    n.status("x")
    n.watchdog_ping()
    n.close()


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "vsock:2:1234"])
def test_unsupported_notify_socket_is_disabled(value: str) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "2000000"})
    assert not n.enabled
    assert n.watchdog_interval is None


def test_vanished_socket_does_not_raise_and_warns_once(
    notify_path: Path, notify_sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="reverse_http.systemd")
    with make_notifier(notify_path, WATCHDOG_USEC="2000000") as n:
        n.ready()
        assert received(notify_sock) == [b"READY=1"]
        notify_sock.close()
        notify_path.unlink()
        n.watchdog_ping()
        n.status("still running")
        n.stopping()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(notify_path) in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2


def test_socket_never_existed_does_not_raise(tmp_path: Path) -> None:
    with make_notifier(tmp_path / "missing.sock", WATCHDOG_USEC="2000000") as n:
        n.ready()
        n.watchdog_ping()


def test_full_socket_does_not_block(notify_path: Path, notify_sock: socket.socket) -> None:
    """systemd not reading (hung PID 1, full queue) must not stall the event loop."""
    with make_notifier(notify_path, WATCHDOG_USEC="2000000") as n:
        for _ in range(10_000):
            n.watchdog_ping()
    assert 0 < len(received(notify_sock)) < 10_000


# ------------------------------------------------------------------- watchdog


class RecordingNotifier(Notifier):
    """Also records the virtual time of each ping."""

    def __init__(self, address: bytes | None, watchdog_usec: int | None = None) -> None:
        super().__init__(address, watchdog_usec)
        self.ping_times: list[float] = []

    def watchdog_ping(self) -> None:
        self.ping_times.append(trio.current_time())
        super().watchdog_ping()


async def test_run_watchdog_pings_every_second(
    notify_path: Path, notify_sock: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    base = Notifier.from_environ({"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"})
    n = RecordingNotifier(os.fsencode(notify_path), 2_000_000)
    assert base.watchdog_interval == n.watchdog_interval == 1.0
    datagrams: list[bytes] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_watchdog, n)
        # Drain between pings (the kernel queues only a few datagrams per socket), at
        # times that never coincide with a ping.
        await trio.sleep(0.25)
        while trio.current_time() - start < 10.25:
            datagrams += received(notify_sock)
            await trio.sleep(0.5)
        datagrams += received(notify_sock)
        nursery.cancel_scope.cancel()
    n.close()
    # Pings at 0, 1, ..., 10 virtual seconds: the first at once, then every interval.
    assert datagrams == [b"WATCHDOG=1"] * 11
    assert [t - start for t in n.ping_times] == pytest.approx([float(i) for i in range(11)])


async def test_run_watchdog_returns_without_watchdog(
    notify_path: Path, notify_sock: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    with trio.fail_after(1):
        await run_watchdog(Notifier.from_environ({"NOTIFY_SOCKET": str(notify_path)}))
        await run_watchdog(Notifier.from_environ({}))
        await run_watchdog(
            Notifier.from_environ(
                {
                    "NOTIFY_SOCKET": str(notify_path),
                    "WATCHDOG_USEC": "2000000",
                    "WATCHDOG_PID": str(os.getpid() + 1),
                }
            )
        )
    assert trio.current_time() == start
    assert received(notify_sock) == []


# ------------------------------------------------------------------ unit files


Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A minimal systemd unit parser: sections of repeated ``Key=value`` lines.

    Repeated keys accumulate (an empty assignment resets the list, as systemd does for
    list settings); continuation lines are not used by these units and are rejected.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"continuation lines not supported: {raw!r}"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"assignment outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        values = section.setdefault(key.strip(), [])
        value = value.strip()
        if value:
            values.append(value)
        else:
            values.clear()
    return unit


def last(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    return values[-1] if values else ""


def unit_path(daemon: str) -> Path:
    return UNIT_DIR / f"reverse-http-{daemon}.service"


HARDENING = {
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "LimitNOFILE": "65536",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
}


#: Where docs/systemd/README.md (and README.md) install the command: a virtual
#: environment, which works where pip may not install into the system Python (PEP 668).
INSTALLED = "/opt/reverse-http/venv/bin/reverse-http"


def test_install_instructions_put_the_command_where_the_units_run_it() -> None:
    guide = (UNIT_DIR / "README.md").read_text(encoding="utf-8")
    install = re.search(r"^## Install\n.*?```sh\n(.*?)```", guide, re.S | re.M)
    assert install is not None
    venv = str(Path(INSTALLED).parent.parent)
    commands = install.group(1).splitlines()
    assert f"python3 -m venv {venv}" in commands
    assert f"{venv}/bin/pip install ." in commands
    assert f"{INSTALLED} version" in commands


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_file(daemon: str) -> None:
    unit = parse_unit(unit_path(daemon).read_text(encoding="utf-8"))
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert last(unit, "Service", "Type") == "notify"
    assert last(unit, "Service", "NotifyAccess") == "main"
    assert last(unit, "Service", "WatchdogSec") == "30s"
    assert last(unit, "Service", "Restart") == "on-failure"
    assert last(unit, "Service", "KillSignal") == "SIGTERM"
    assert service["EnvironmentFile"] == ["-/etc/reverse-http/%N.env"]
    for key, value in HARDENING.items():
        assert key in service, key
        assert last(unit, "Service", key) == value, key
    assert "/etc/reverse-http" in service["ReadOnlyPaths"]
    assert service["ConfigurationDirectory"] == ["reverse-http"]
    assert "AmbientCapabilities" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == INSTALLED
    assert argv[1] == daemon
    assert argv[2:] == ["--config", f"/etc/reverse-http/{daemon}.yaml"]


@pytest.mark.parametrize("daemon", ["proxy", "lb"])
def test_stop_timeout_exceeds_grace_period(daemon: str) -> None:
    """systemd must not SIGKILL a daemon that is still within its shutdown grace period."""
    unit = parse_unit(unit_path(daemon).read_text(encoding="utf-8"))
    stop = parse_duration(last(unit, "Service", "TimeoutStopSec"))
    default = options.command_flag(daemon, "shutdown-grace-period").default
    assert isinstance(default, str)
    grace = parse_duration(default)
    assert stop == 45.0
    assert stop >= grace + 10


def test_agent_waits_for_network_online() -> None:
    unit = parse_unit(unit_path("agent").read_text(encoding="utf-8"))
    assert "network-online.target" in unit["Unit"]["After"]
    assert "network-online.target" in unit["Unit"]["Wants"]


def test_proxy_documents_low_port_alternative() -> None:
    text = unit_path("proxy").read_text(encoding="utf-8")
    assert re.search(r"^#\s*AmbientCapabilities=CAP_NET_BIND_SERVICE$", text, re.M)
    assert re.search(r"^#\s*CapabilityBoundingSet=CAP_NET_BIND_SERVICE$", text, re.M)


def test_env_example_names_are_real_flags() -> None:
    """Every variable in the example (set or commented out) is one the CLI reads."""
    known = {v for flag in options.FLAGS.values() for v in flag.envvars}
    known.add(options.CONFIG_ENVVAR)
    text = (UNIT_DIR / "reverse-http.env.example").read_text(encoding="utf-8")
    names = re.findall(r"^#?(REVERSE_HTTP_[A-Z0-9_]+)=", text, re.M)
    assert "REVERSE_HTTP_AUTH_JWT_TOKEN" in names
    assert set(names) <= known, set(names) - known
    assert options.env_var("auth.jwt.token") == "REVERSE_HTTP_AUTH_JWT_TOKEN"


def _verify(tool: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "verify", "--man=no", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys, bad values, missing binaries."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    true = shutil.which("true")
    assert true is not None
    # A unit that is certainly valid: if even that fails, the environment is the
    # problem (no usable systemd, sandbox), not our units.
    control = tmp_path / "reverse-http-control.service"
    control.write_text(f"[Unit]\nDescription=control\n[Service]\nExecStart={true}\n")
    try:
        result = _verify(tool, [control])
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"systemd-analyze unusable here: {exc}")
    if result.returncode != 0 or result.stderr.strip():
        pytest.skip(f"systemd-analyze verify fails here even on a trivial unit: {result.stderr}")

    copies = []
    for daemon in DAEMONS:
        text = unit_path(daemon).read_text(encoding="utf-8")
        text, count = re.subn(
            rf"^ExecStart={re.escape(INSTALLED)} ", f"ExecStart={true} ", text, flags=re.M
        )
        assert count == 1
        # systemctl reload: --check first, then SIGHUP (which never ends a daemon)
        text, count = re.subn(
            rf"^ExecReload={re.escape(INSTALLED)} {daemon} (.*) --check$",
            f"ExecReload={true} \\1",
            text,
            flags=re.M,
        )
        assert count == 1
        assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in text
        copy = tmp_path / unit_path(daemon).name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    result = _verify(tool, copies)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys and bad values are only warnings ("..., ignoring"): still failures.
    problems = [
        line
        for line in output.splitlines()
        if any(str(c) in line for c in copies) or "ignoring" in line
    ]
    assert not problems, output
