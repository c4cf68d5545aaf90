"""The newcomer's one command: `reverse-http demo` works on a fresh machine."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def test_demo_once_carries_a_request_through_the_tunnel() -> None:
    exe = shutil.which("reverse-http")
    cmd = [exe] if exe else [sys.executable, "-c", "from reverse_http.cli.main import main; main()"]
    done = subprocess.run(
        [*cmd, "demo", "--once", "--http-port", "0", "--agent-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "self-check through the tunnel: OK" in done.stdout


@pytest.mark.parametrize("flag", ["--http-port", "--agent-port"])
def test_demo_reports_a_busy_port_in_one_line(flag: str) -> None:
    import socket

    kind = socket.SOCK_STREAM if flag == "--http-port" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        port = busy.getsockname()[1]
        exe = shutil.which("reverse-http") or "reverse-http"
        done = subprocess.run(
            [exe, "demo", "--once", flag, str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("reverse-http")]
    assert len(errors) == 1 and "address already in use" in errors[0], done.stderr
    # the flag the demo user typed, not the proxy's own
    assert f"demo: {flag} {port}: address already in use" in errors[0], errors[0]
    assert "Traceback" not in done.stderr
