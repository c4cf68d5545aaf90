"""Developer and CI sessions. `nox -s lint tests integration` is what CI runs (see README)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "integration"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests over real loopback sockets (memcached included)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not integration and not interop", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """HA failover: real processes behind real nginx UDP and TCP load balancers."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "integration", *(session.posargs or ["-q", "-s"]))


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Live tests against the real Go reference (tests/test_go_reference.py): builds it
    with `go install` at the pinned commit, or takes $REVERSE_HTTP_GO_REFERENCE. Fails
    when Go is there but the reference can't be built; skips without Go."""
    session.install("-e", ".[test]")
    session.env["REVERSE_HTTP_INTEROP"] = "required"
    session.run("pytest", "-m", "interop", *(session.posargs or ["-q", "-rs"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff on everything, mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "reverse_http", "tests", "bench", "conftest.py", "noxfile.py")
    session.run("mypy", "reverse_http")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and latency benchmarks; they print tables and assert nothing."""
    session.install("-e", ".")
    session.run("python", "bench/quic_throughput.py", *session.posargs)
    session.run("python", "bench/tunnel.py")
    session.run("python", "bench/scale.py", "--quick")
    session.run("python", "bench/agents.py", "--quick")
    session.run("python", "bench/flood.py", "--quick")
    session.run("python", "bench/startup.py")


@nox.session(python=PYTHON)
def wan(session: nox.Session) -> None:
    """Emulated WAN links (bench/linkemu, root): the tunnel next to ssh -R and pproxy."""
    session.install("-e", ".", "pproxy==2.7.9")
    session.run("python", "bench/wan.py", *session.posargs)
