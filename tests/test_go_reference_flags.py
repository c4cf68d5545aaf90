"""Every flag of the real Go reference, against docs/compatibility.md and our CLI.

For each command the Go program's own ``--help`` lists, its flags and the defaults it
prints are parsed, and: (i) the doc's table for that command has exactly those flags,
with the Go default as printed; (ii) our CLI takes them all, on one command line per
command, with the Go defaults as values (the daemons with ``--check``, which binds
nothing; the ``auth`` commands and ``version`` for real, in a scratch directory); a flag
the doc marks "not implemented" must be refused by ours instead; (iii) the doc's "Ours"
column is our default (the unit test's check, repeated next to the Go one).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from reverse_http.devcerts import CertFiles
from tests.ha_cluster import reverse_http_exe
from tests.test_compatibility_doc import GLOBAL, Row, doc_rows, our_commands, our_flags
from tests.test_go_reference import reference  # noqa: F401  (the fixture)

pytestmark = pytest.mark.interop

#: ``  -o, --out=FILE   help`` / ``      --agent-server.listen-address=":4242"``
_FLAG_LINE = re.compile(r"^\s+(?:(-[A-Za-z]), )?(--[a-z][a-z0-9.-]*)(?:=(\S+))?(?:\s|$)")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(?:,\.\.\.)?$")
_COMMAND_LINE = re.compile(r"^  ([a-z][a-z ]*?)(?= \[flags\]| --|$)")
#: Values for flags whose help shows a placeholder, by placeholder.
_SAMPLES = {"STRING": "x", "SOURCE": "x", "PATTERNS,...": "example.com"}
_DAEMONS = ("proxy", "agent", "lb")


@dataclass(frozen=True)
class GoFlag:
    names: tuple[str, ...]
    #: What ``--help`` prints after ``=`` (quotes dropped), None when it prints none.
    default: str | None
    placeholder: str | None
    boolean: bool

    @property
    def long(self) -> str:
        return self.names[-1]


def go_help(binary: Path, command: str) -> str:
    done = subprocess.run(
        [str(binary), *command.split(), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def parse_flags(help_text: str) -> dict[str, GoFlag]:
    """The flags of the ``Flags:`` section of a kong help page, by long name."""
    flags: dict[str, GoFlag] = {}
    section = help_text.split("\nFlags:\n", 1)[1].split("\nCommands:\n", 1)[0]
    for line in section.splitlines():
        match = _FLAG_LINE.match(line)
        if match is None:
            continue
        short, long, value = match.groups()
        placeholder = value if value is not None and _PLACEHOLDER.match(value) else None
        default = None if value is None or placeholder else value.strip('"')
        names = (short, long) if short else (long,)
        flags[long] = GoFlag(names, default, placeholder, boolean=value is None)
    return flags


def parse_commands(help_text: str) -> list[str]:
    """The leaf commands of the root help page, and the groups above them."""
    section = help_text.split("\nCommands:\n", 1)[1].split("\n\n\n", 1)[0]
    leaves = [m.group(1) for line in section.splitlines() if (m := _COMMAND_LINE.match(line))]
    groups = {" ".join(leaf.split()[:n]) for leaf in leaves for n in range(1, len(leaf.split()))}
    return [*leaves, *sorted(groups)]


def _clean_env() -> dict[str, str]:
    """No REVERSE_HTTP_* or LOG_* from the caller: only the command line counts."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REVERSE_HTTP_") and k not in ("LOG_LEVEL", "LOG_FORMAT")
    }


@pytest.fixture(scope="module")
def go_flags(reference: Path) -> dict[str, dict[str, GoFlag]]:  # noqa: F811
    """The Go program's flags of each of its commands, from its own help pages."""
    commands = parse_commands(go_help(reference, ""))
    assert {"proxy", "agent", "lb", "version", "auth key private", "auth jwt token"} <= set(
        commands
    ), commands
    return {command: parse_flags(go_help(reference, command)) for command in commands}


ROWS = doc_rows()


def _doc_go_rows(command: str) -> dict[str, Row]:
    return {r.long: r for r in ROWS if r.go and r.command in (command, GLOBAL)}


def test_the_doc_lists_every_go_flag_with_the_default_go_prints(
    go_flags: dict[str, dict[str, GoFlag]],
) -> None:
    problems = []
    for command, flags in go_flags.items():
        rows = _doc_go_rows(command)
        if command not in {r.command for r in ROWS} and set(flags) - set(rows):
            problems.append(f"{command}: no table in docs/compatibility.md")
            continue
        for long, flag in flags.items():
            row = rows.get(long)
            if row is None:
                problems.append(f"Go {command} {long}: not in docs/compatibility.md")
                continue
            if set(row.names) != set(flag.names):
                problems.append(f"{row}: names {row.names}, Go's are {flag.names}")
            if row.go_hidden:  # the values: test_hidden_defaults_are_the_go_programs
                if flag.placeholder is None:
                    problems.append(f"{row}: says hidden, but Go prints {flag.default!r}")
                continue
            expected = "false" if flag.boolean else flag.default
            if row.go_default != expected:
                problems.append(f"{row}: Go default {row.go_default!r}, Go prints {expected!r}")
        for long, row in rows.items():
            if row.command == command and long not in flags:
                problems.append(f"{row}: Go's {command} has no such flag")
    assert not problems, "\n".join(problems)


def _value(flag: GoFlag, command: str, scratch: Path) -> str:
    """A value ours must take for ``flag``: a switch in kong's long form, ``=true`` (the
    bare switch is what the unit tests use)."""
    if flag.boolean:
        return "true"
    if flag.default is not None:
        return flag.default
    if flag.placeholder == "FILE":
        if flag.long == "--in":
            return str(scratch / "key.pem")
        return str(scratch / f"{command.replace(' ', '-')}{flag.long}")
    assert flag.placeholder is not None
    return _SAMPLES[flag.placeholder]


def _run_ours(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*reverse_http_exe(), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=_clean_env(),
    )


def _order(command: str) -> tuple[int, str]:
    """``auth key private`` first: it writes the key the other auth commands read."""
    return (0 if command == "auth key private" else 1, command)


def test_our_cli_takes_every_go_flag(
    go_flags: dict[str, dict[str, GoFlag]], tmp_path: Path
) -> None:
    leaves = [c for c in go_flags if c not in {" ".join(c2.split()[:-1]) for c2 in go_flags}]
    ran = []
    for command in sorted(leaves, key=_order):
        rows = _doc_go_rows(command)
        argv = command.split()
        refused = []
        for long, flag in go_flags[command].items():
            if long == "--help":
                continue
            if long in rows and rows[long].same == "not implemented":
                refused.append(long)
                continue
            value = _value(flag, command, tmp_path)
            if command == "auth key private" and long == "--out":
                value = str(tmp_path / "key.pem")
            argv.append(f"{long}={value}")
        if command in _DAEMONS:
            argv += ["--config=", "--check"]
        done = _run_ours(argv, tmp_path)
        output = done.stdout + done.stderr
        assert "No such option" not in output and "no such option" not in output, output
        if command in _DAEMONS:  # the check ran: every flag was parsed
            assert re.search(r"configuration (OK|check failed)", output), (argv, output)
        else:
            assert done.returncode == 0, (argv, output)
        for long in refused:
            rejected = _run_ours([*command.split(), f"{long}=x", "--help"], tmp_path)
            assert rejected.returncode != 0, f"{command} {long}: the doc says not implemented"
        shown = _run_ours([*command.split(), "-h"], tmp_path)
        assert shown.returncode == 0 and shown.stdout.startswith("Usage:"), shown
        ran.append(command)
    assert (tmp_path / "key.pem").is_file()
    assert (tmp_path / "auth-jwt-token--out").read_text().count(".") == 2  # a JWT
    assert set(ran) >= {"proxy", "agent", "lb", "version"}


def _run_go(binary: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=_clean_env(),
    )


def test_hidden_defaults_are_the_go_programs(
    reference: Path,  # noqa: F811
    certs: CertFiles,
    tmp_path: Path,
) -> None:
    """The file defaults ``--help`` hides, seen in what the Go programs do without the
    flag: the auth commands read and write in the working directory; the JWT verifiers
    of proxy and lb fail at start naming the public key file they looked for."""
    observed: dict[tuple[str, str], str] = {}
    auth_dir = tmp_path / "auth"
    auth_dir.mkdir()
    for command, flag in (
        ("auth key private", "--out"),
        ("auth key public", "--out"),
        ("auth jwt token", "--out"),
    ):
        before = set(os.listdir(auth_dir))
        agent_id = ["--agent-id=a"] if command == "auth jwt token" else []
        done = _run_go(reference, [*command.split(), *agent_id], auth_dir)
        assert done.returncode == 0, done.stderr
        (new,) = set(os.listdir(auth_dir)) - before
        observed[command, flag] = new
    private = observed["auth key private", "--out"]
    observed["auth key public", "--in"] = private  # the only file there when they ran
    observed["auth jwt token", "--in"] = private
    empty = tmp_path / "empty"
    empty.mkdir()
    listen = ("--http-proxy.listen-address=127.0.0.1:0", "--store.memcached.address=127.0.0.1:1")
    tls = (f"--agent-server.tls.file.key={certs.key}", f"--agent-server.tls.file.cert={certs.cert}")
    for command, args in (
        ("proxy", (*listen, "--agent-server.listen-address=127.0.0.1:0", *tls)),
        ("lb", listen),
    ):
        done = _run_go(reference, [command, "--auth.type=jwt", *args], empty)
        missing = re.search(r"open (\S+): no such file or directory", done.stderr)
        assert done.returncode != 0 and missing, done.stderr
        observed[command, "--auth.jwt.public-key"] = missing.group(1)
    documented = {(r.command, r.long): r.go_default for r in ROWS if r.go_hidden}
    assert documented == observed


def test_the_doc_has_our_defaults(go_flags: dict[str, dict[str, GoFlag]]) -> None:
    ours = our_commands()
    problems = []
    for command in go_flags:
        if command not in ours:
            problems.append(f"{command}: Go has it, ours does not")
            continue
        flags = our_flags(ours[command])
        for long, row in _doc_go_rows(command).items():
            if row.same == "not implemented" or long not in flags:
                continue
            if row.ours_default != flags[long][1]:
                problems.append(
                    f"{row}: Ours says {row.ours_default!r}, ours is {flags[long][1]!r}"
                )
    assert not problems, "\n".join(problems)


def test_help_parser() -> None:
    text = (
        "Usage: x proxy [flags]\n\nFlags:\n  -h, --help      Show help.\n"
        '      --log.level="info"   Level ($LOG_LEVEL)\n\n'
        "      --a.b=0s\n                   Interval.\n  -o, --out=FILE   Out.\n"
        "      --c=PATTERNS,...   List.\n      --d.enable   Enable.\n"
    )
    flags = parse_flags(text)
    assert flags == {
        "--help": GoFlag(("-h", "--help"), None, None, True),
        "--log.level": GoFlag(("--log.level",), "info", None, False),
        "--a.b": GoFlag(("--a.b",), "0s", None, False),
        "--out": GoFlag(("-o", "--out"), None, "FILE", False),
        "--c": GoFlag(("--c",), None, "PATTERNS,...", False),
        "--d.enable": GoFlag(("--d.enable",), None, None, True),
    }
    root = (
        "Usage: x <command>\n\nFlags:\n  -h, --help  Help.\n\nCommands:\n  agent [flags]\n"
        "    Start agent.\n\n  auth jwt token --agent-id=STRING [flags]\n    Token.\n\n"
        '  version [flags]\n    Show version\n\nRun "x <command> --help" for more.\n'
    )
    assert parse_commands(root) == ["agent", "auth jwt token", "version", "auth", "auth jwt"]
