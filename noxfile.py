"""Developer and CI sessions: `nox -s lint tests` is what CI runs (see README)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests over real loopback sockets."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff on everything, mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "reverse_http", "tests", "bench", "conftest.py", "noxfile.py")
    session.run("mypy", "reverse_http")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput and latency benchmarks; prints tables, asserts nothing."""
    session.install("-e", ".")
    session.run("python", "bench/quic_throughput.py", *session.posargs)
