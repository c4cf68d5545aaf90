"""docs/compatibility.md cannot rot: its flag tables are checked against our real CLI.

Every flag of every command of ours (the daemon tables of ``reverse_http.cli.options``
and the click tree of ``reverse_http.cli.main.app``) must be in the doc's tables for its
command, every flag the doc names must exist in ours (or be refused by ours where the doc
says "not implemented"), and the doc's "Ours" column must be our default. The Go columns
are checked against the real Go binary by ``tests/test_go_reference_flags.py``, which
uses the parser below.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer._click.core import Command
from typer.core import TyperOption

from reverse_http.cli import options
from reverse_http.cli.main import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"
#: The section of flags the Go program takes on every command.
GLOBAL = "*"
GLOBAL_HEADING = "Flags of every command"
SAME_VALUES = ("yes", "partly", "no", "not implemented")
NONE_CELL = "—"
HIDDEN = " (hidden)"
_SECTION = re.compile(r"^## (.+)$", re.M)
_COMMAND_HEADING = re.compile(r"^`([a-z][a-z ]*)`( \(ours only\))?$")
_CODE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    """One flag row of a table in the doc."""

    command: str  # GLOBAL or a command path such as "auth key private"
    names: tuple[str, ...]  # "-o", "--out"
    #: From the table of the Go program's flags (else: an "ours only" table).
    go: bool
    #: The Go column: the default ``--help`` prints, None for none; ``go_hidden``: the
    #: source has a default that ``--help`` does not show.
    go_default: str | None
    go_hidden: bool
    ours_default: str | None
    same: str | None
    line: int

    @property
    def long(self) -> str:
        return next(n for n in self.names if n.startswith("--"))

    def __str__(self) -> str:
        where = "every command" if self.command == GLOBAL else self.command
        return f"docs/compatibility.md:{self.line}: {where} {self.long}"


def _default_cell(cell: str) -> tuple[str | None, bool]:
    hidden = cell.endswith(HIDDEN)
    if hidden:
        cell = cell[: -len(HIDDEN)]
    if cell == NONE_CELL:
        return None, hidden
    code = re.fullmatch(r"`([^`]*)`", cell)
    return (code.group(1) if code else cell), hidden


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def doc_rows(text: str | None = None) -> list[Row]:
    """Every flag row of the doc's per-command tables."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    rows: list[Row] = []
    heads = list(_SECTION.finditer(text))
    for i, head in enumerate(heads):
        title = head.group(1).strip()
        match = _COMMAND_HEADING.match(title)
        if title == GLOBAL_HEADING:
            command = GLOBAL
        elif match:
            command = match.group(1)
        else:
            continue
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        header: list[str] | None = None
        first_line = text.count("\n", 0, head.start()) + 1
        for offset, line in enumerate(text[head.start() : end].splitlines()):
            if not line.startswith("|"):
                header = None
                continue
            cells = _cells(line)
            if header is None:
                header = cells
                continue
            if set(line) <= set("|- "):
                continue
            by = dict(zip(header, cells, strict=True))
            go = "Go default" in by
            go_default, go_hidden = _default_cell(by["Go default"]) if go else (None, False)
            rows.append(
                Row(
                    command=command,
                    names=tuple(_CODE.findall(by["Flag"])),
                    go=go,
                    go_default=go_default,
                    go_hidden=go_hidden,
                    ours_default=_default_cell(by["Ours"])[0],
                    same=by.get("Same?"),
                    line=first_line + offset,
                )
            )
    return rows


# ------------------------------------------------------------------------ ours


def _walk(command: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Command]]:
    yield " ".join(path), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def our_commands() -> dict[str, Command]:
    """Our click commands by path (``""`` is the root), leaves and groups."""
    return dict(_walk(typer.main.get_command(app)))


def _shown(value: object, is_flag: bool) -> str | None:
    """A default as the doc's "Ours" column writes it."""
    if is_flag:
        return "true" if value else "false"
    if value is None or value == "" or value == ():
        return None
    return str(value)


def our_flags(command: Command) -> dict[str, tuple[tuple[str, ...], str | None]]:
    """``--long`` -> (every name, default as the doc writes it), ``-h/--help`` included."""
    flags: dict[str, tuple[tuple[str, ...], str | None]] = {"--help": (("-h", "--help"), "false")}
    for param in command.params:
        if not isinstance(param, TyperOption):
            continue
        long = next(o for o in param.opts if o.startswith("--"))
        flags[long] = (tuple(param.opts), _shown(param.default, param.is_flag))
    return flags


def go_commands(rows: list[Row]) -> set[str]:
    """The commands the doc gives a table of Go flags for."""
    return {r.command for r in rows if r.go and r.command != GLOBAL}


# ----------------------------------------------------------------------- tests


ROWS = doc_rows()
OURS = our_commands()


def test_the_doc_has_tables_for_every_command() -> None:
    documented = {r.command for r in ROWS}
    leaves = {path for path, c in OURS.items() if path and not hasattr(c, "commands")}
    assert leaves <= documented, f"commands without a table: {sorted(leaves - documented)}"
    assert documented - {GLOBAL} <= leaves, f"no such command: {sorted(documented - leaves)}"
    assert go_commands(ROWS) == leaves - {"demo"}


def test_rows_are_well_formed() -> None:
    seen: set[tuple[str, str]] = set()
    for row in ROWS:
        assert row.names and all(n.startswith("-") for n in row.names), row
        assert (row.command, row.long) not in seen, f"{row}: listed twice"
        seen.add((row.command, row.long))
        if row.go:
            assert row.same in SAME_VALUES, f"{row}: Same? must be one of {SAME_VALUES}"


def _rows_for(path: str) -> dict[str, Row]:
    """The rows that apply to our command ``path``: the root's are the global section's;
    a command's are its own and the global ones."""
    rows = {r.long: r for r in ROWS if r.command == GLOBAL}
    if path:
        rows.update({r.long: r for r in ROWS if r.command == path})
    return rows


def test_every_flag_of_ours_is_in_the_doc_with_our_default() -> None:
    problems = []
    for path, command in OURS.items():
        documented = _rows_for(path)
        for long, (names, default) in our_flags(command).items():
            row = documented.get(long)
            where = path or "root"
            if row is None:
                problems.append(f"{where} {long}: not in docs/compatibility.md")
                continue
            if set(row.names) != set(names):
                problems.append(f"{row}: names {row.names}, {where} has {names}")
            # Before the command, the log flags default to the command's own defaults.
            if (path or not row.go) and row.ours_default != default:
                problems.append(f"{row}: Ours says {row.ours_default!r}, {where} has {default!r}")
    assert not problems, "\n".join(problems)


def test_the_daemon_flag_tables_are_all_documented() -> None:
    for command, flags in options.COMMANDS.items():
        documented = _rows_for(command)
        missing = [f.name for f in flags if f"--{f.name}" not in documented]
        assert not missing, f"{command}: not in docs/compatibility.md: {missing}"


def test_every_flag_in_the_doc_is_ours_unless_it_says_not_implemented() -> None:
    problems = []
    for row in ROWS:
        if row.command != GLOBAL:
            paths = [row.command]
        else:  # the Go program takes these on each of its commands; ours-only: the root
            paths = sorted(go_commands(ROWS)) if row.go else [""]
        for path in paths:
            present = row.long in our_flags(OURS[path])
            if row.same == "not implemented" and present:
                problems.append(f"{row}: says not implemented, but {path} has it")
            elif row.same != "not implemented" and not present:
                problems.append(f"{row}: {path or 'root'} has no {row.long}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("`:4242`", (":4242", False)),
        ("—", (None, False)),
        ("false", ("false", False)),
        ("`auth-key-public.pem` (hidden)", ("auth-key-public.pem", True)),
    ],
)
def test_default_cells(cell: str, expected: tuple[str | None, bool]) -> None:
    assert _default_cell(cell) == expected


def test_parser_reads_both_kinds_of_table() -> None:
    text = (
        "## `lb`\n\n| Flag | Go default | Ours | Same? | Notes |\n| --- | --- | --- | --- | --- |\n"
        "| `-o`, `--out` | `a` (hidden) | `b` | partly | x |\n\nOurs only:\n\n"
        "| Flag | Ours | Notes |\n| --- | --- | --- |\n| `--check` | false | |\n"
        "## Elsewhere\n\n| Flag | Ours | Notes |\n| --- | --- | --- |\n| `--nope` | — | |\n"
    )
    rows = doc_rows(text)
    assert [
        (r.command, r.names, r.go, r.go_default, r.go_hidden, r.ours_default) for r in rows
    ] == [
        ("lb", ("-o", "--out"), True, "a", True, "b"),
        ("lb", ("--check",), False, None, False, "false"),
    ]
    assert rows[0].line == 5
