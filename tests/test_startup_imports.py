"""Start-up stays cheap (issue 12 gap 6): what each entry point imports, checked without
timing. The QUIC stack (aioquic, its TLS and service_identity, trio) costs ~150 ms of
imports; commands and modules that do not run a transport must not load it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("aioquic", "trio", "service_identity", "httpx", "h11", "aiomcache", "trio_asyncio")


def loaded(code: str) -> set[str]:
    """Top-level packages among HEAVY that a fresh interpreter has after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "module",
    [
        "reverse_http.config",
        "reverse_http.quic.settings",
        "reverse_http.quic",
        "reverse_http.cli.main",
    ],
)
def test_config_and_cli_modules_import_no_transport(module: str) -> None:
    assert loaded(f"import {module}") == set()


@pytest.mark.parametrize("argv", [["version"], ["auth", "--help"], ["proxy", "--help"]])
def test_commands_without_a_transport_load_none(argv: list[str]) -> None:
    code = (
        "import sys\nfrom reverse_http.cli.main import main\n"
        f"sys.argv = ['reverse-http', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    assert loaded(code) == set()


def test_quic_names_resolve_lazily() -> None:
    """The package still exports its names; they load on first use."""
    assert loaded("from reverse_http.quic import Connection, TransportSettings") >= {
        "aioquic",
        "trio",
    }


def test_daemons_do_not_load_aioquic_asyncio() -> None:
    """aioquic.asyncio (and with it asyncio's event loop machinery) is not our transport."""
    code = "import reverse_http.proxy.server, reverse_http.agent.client, sys\n"
    code += "assert not [m for m in sys.modules if m.startswith('aioquic.asyncio')], 'loaded'"
    loaded(code)


@pytest.mark.parametrize("module", ["reverse_http.proxy.server", "reverse_http.agent.client"])
def test_proxy_and_agent_leave_memcached_to_those_that_use_it(module: str) -> None:
    """aiomcache pulls in asyncio and trio-asyncio (~0.2 s); only a proxy with
    ``--store.type memcached`` (and the lb) loads it, when it opens the store."""
    assert not loaded(f"import {module}") & {"aiomcache", "trio_asyncio"}


def test_the_cli_module_runs_as_a_program() -> None:
    """``python -m reverse_http.cli.main`` is the fallback of the tests' and benchmarks'
    launchers when no ``reverse-http`` is on PATH: it must run the CLI, not exit silently."""
    done = subprocess.run(
        [sys.executable, "-m", "reverse_http.cli.main", "version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
