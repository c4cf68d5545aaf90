"""Start-up stays cheap (issue 12 gap 6): what each entry point imports, checked without
timing. The QUIC stack (aioquic, its TLS and service_identity, trio) costs ~150 ms of
imports; commands and modules that do not run a transport must not load it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

HEAVY = (
    "aioquic",
    "trio",
    "service_identity",
    "httpx",
    "h11",
    "aiomcache",
    "trio_asyncio",
    "pydantic",
    "cryptography",
    "jose",
)


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


DAEMON_ARGS = {
    "proxy": ["--agent-server.listen-address=127.0.0.1:0", "--http-proxy.listen-address=:0"],
    "agent": ["--auth.noauth.agent-id=startup", "--agent-client.tls.insecure-skip-verify"],
    "lb": ["--store.memcached.address=127.0.0.1:1", "--http-proxy.tls.enable=false"],
}


@pytest.mark.parametrize("command", sorted(DAEMON_ARGS))
def test_daemon_commands_load_only_what_they_run(command: str) -> None:
    """Each daemon's command line, up to the point where it would run the daemon: typer
    converts its string flags without pydantic (~0.1 s), only the proxy and the agent load
    the QUIC stack (and cryptography with it), and only the lb (whose store is memcached)
    aiomcache and trio-asyncio."""
    argv = [command, "--config=", "--log.level=warn", *DAEMON_ARGS[command]]
    code = (
        "import sys\nimport reverse_http.cli.main as cli\nran = []\n"
        "cli._run_daemon = lambda run, config: ran.append(config)\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert len(ran) == 1, ran\n"
    )
    heavy = loaded(code)
    assert "pydantic" not in heavy
    assert "trio" in heavy
    assert ("aioquic" in heavy) == (command != "lb")
    expected = {"aiomcache", "trio_asyncio"} if command == "lb" else set()
    assert heavy & {"aiomcache", "trio_asyncio"} == expected
    # the QUIC stack's TLS needs cryptography; the lb without TLS files reads no
    # certificate, and no daemon with --auth.type noauth verifies a token (python-jose)
    assert ("cryptography" in heavy) == (command != "lb")
    assert "jose" not in heavy


def test_values_that_need_converting_still_go_to_typer() -> None:
    """A boolean from the environment is typer's to convert (and it loads pydantic)."""
    code = (
        "import os, sys\nimport reverse_http.cli.main as cli\nran = []\n"
        "cli._run_daemon = lambda run, config: ran.append(config)\n"
        "os.environ['REVERSE_HTTP_AGENT_SERVER_RETRY'] = 'yes'\n"
        "try:\n    cli.main(['proxy', '--config=', '--log.level=warn'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert ran[0].agent_admission.retry is True, ran\n"
    )
    assert "pydantic" in loaded(code)


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


def _all_options() -> list[tuple[str, Any]]:
    from typer.core import TyperGroup, _TyperParameter
    from typer.main import get_command

    from reverse_http.cli.main import app

    root = get_command(app)
    ctx = root.make_context("reverse-http", ["version"], resilient_parsing=True)
    found: list[tuple[str, Any]] = []

    def walk(command: Any, path: str) -> None:
        for param in [*command.params, command.get_help_option(ctx)]:
            if isinstance(param, _TyperParameter):
                found.append((f"{path} {param.name}", param))
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(root, "reverse-http")
    return found


def _outcome(convert: Any, value: object, param: Any) -> tuple[str, object]:
    try:
        result = convert(value, param=param, ctx=None)
    except Exception as exc:  # the error typer would show
        return type(exc).__name__, str(exc)
    return type(result).__name__, result


def test_lazy_conversion_gives_what_typer_gives() -> None:
    """For every option of every command, and values of each kind a command line, the
    environment or a configuration file can give, the same result (or error) as typer's."""
    from typer._coercion import build_runtime_param

    from reverse_http.cli.coercion import LazyConversion, lazy_conversion

    values: list[object] = [":4242", "", "yes", "7", ("a", "b"), ["a"], (), b"x", 7, 1.5, True]
    options = _all_options()
    kinds = {str(param.type_descriptor.annotation) for _, param in options}
    assert {"<class 'str'>", "<class 'bool'>", "list[str]"} <= kinds
    for name, param in options:
        ours = lazy_conversion(param)
        assert isinstance(ours, LazyConversion), name
        theirs = build_runtime_param(param.type_descriptor)
        for value in [None, *values]:
            expected = _outcome(theirs.coerce, value, param)
            assert _outcome(ours.coerce, value, param) == expected, (name, value)


def test_build_info_waits_for_the_first_scrape() -> None:
    """In a git checkout the build's commit costs a ``git log`` (~30 ms): the daemons'
    metric sets look it up when first scraped, not while the daemon starts."""
    code = (
        "import reverse_http.metrics as m\nfrom reverse_http.buildinfo import build_info\n"
        "sets = [m.ProxyMetrics(), m.AgentMetrics(), m.LbMetrics()]\n"
        "assert build_info.cache_info().currsize == 0, 'looked up at start'\n"
        "assert b'reverse_http_build_info{' in sets[0].exposition()\n"
        "assert build_info.cache_info().currsize == 1\n"
    )
    loaded(code)


def test_collector_thresholds_are_set_before_the_imports() -> None:
    """The console script sets the daemons' GC thresholds before it imports typer and
    the daemons: with the defaults, a dozen collections ran over the import-time objects."""
    code = (
        "import gc, sys\nfrom reverse_http.gctuning import YOUNG_THRESHOLD\nseen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n            seen.append(gc.get_threshold()[0])\n"
        "sys.meta_path.insert(0, Spy())\nfrom reverse_http.cli import main\n"
        "try:\n    main(['auth', '--help'])\nexcept SystemExit as e:\n    assert not e.code\n"
        "assert seen == [YOUNG_THRESHOLD], seen\n"
    )
    loaded(code)


def test_daemons_freeze_the_collector_when_ready_not_before_listening() -> None:
    """The full collection before ``gc.freeze()`` (tens of ms) runs once the daemon says
    it is ready (listening, or for the agent connected), not on the way to listening."""
    code = (
        "import gc, trio\nimport reverse_http.cli.main as cli\n"
        "from reverse_http.gctuning import YOUNG_THRESHOLD\nseen = []\n"
        "def run(main, config):\n"
        "    seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))\n"
        "    notifier = cli._notifier()\n    notifier.ready('listening')\n"
        "    seen.append(gc.get_freeze_count())\n    notifier.ready('again')\n"
        "trio.run = run\ngc.unfreeze()\ncli._run_daemon(None, None)\n"
        "assert seen[0] == (0, YOUNG_THRESHOLD) and seen[1] > 1000, seen\n"
    )
    loaded(code)


@pytest.mark.parametrize(
    "args",
    [
        ["proxy", "--help"],
        ["agent", "--help"],
        ["lb", "--help"],
        ["auth", "--help"],
        ["auth", "jwt", "token", "--help"],
        ["version", "-V"],
        ["proxy", "--no-such-flag"],
        ["lb", "--check", "--config=", "--store.memcached.address=127.0.0.1:1"],
    ],
)
def test_a_command_built_alone_behaves_as_in_the_whole_command_line(args: list[str]) -> None:
    """``main`` builds only the command it runs (typer builds every signature's options
    first): the same output and exit status as with all of them."""
    from typer.testing import CliRunner

    from reverse_http.cli.main import _app_for, app

    alone = _app_for(args)
    assert alone is not app
    assert len(alone.registered_commands) + len(alone.registered_groups) == 1
    whole = CliRunner().invoke(app, args, prog_name="reverse-http")
    result = CliRunner().invoke(alone, args, prog_name="reverse-http")
    assert (result.exit_code, result.output) == (whole.exit_code, whole.output)


@pytest.mark.parametrize("args", [[], ["--help"], ["--log.level", "warn", "proxy"], ["nosuch"]])
def test_without_a_command_first_the_whole_command_line_answers(args: list[str]) -> None:
    from reverse_http.cli.main import _app_for, app

    assert _app_for(args) is app


def test_a_typer_whose_internals_differ_keeps_its_own_conversion_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``install`` builds every converter before setting any: one that raises (another
    typer's ``RuntimeParam`` signature) leaves every option to typer, and the command
    still parses its options."""
    from typer._click.core import Context
    from typer.core import TyperGroup, _TyperParameter
    from typer.main import get_command
    from typer.testing import CliRunner

    from reverse_http.cli import coercion
    from reverse_http.cli.main import app

    real = coercion.lazy_conversion
    calls = 0

    def breaks_on_the_third(param: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TypeError("RuntimeParam.__init__() got an unexpected keyword argument")
        return real(param)

    root = get_command(app)
    ctx = Context(root, info_name="reverse-http")  # make_context would install already

    def converters(command: Any) -> list[Any]:
        found = [
            getattr(param, "_runtime_param", None)
            for param in [*command.params, command.get_help_option(ctx)]
            if isinstance(param, _TyperParameter)
        ]
        if isinstance(command, TyperGroup):
            for sub in command.commands.values():
                found += converters(sub)
        return found

    before = converters(root)
    assert before.count(None) > 3
    monkeypatch.setattr(coercion, "lazy_conversion", breaks_on_the_third)
    coercion.install(root, ctx)
    assert calls == 3
    assert converters(root) == before
    result = CliRunner().invoke(app, ["--log.level", "warn", "version"], prog_name="reverse-http")
    assert result.exit_code == 0, result.output
    assert result.output.strip()
