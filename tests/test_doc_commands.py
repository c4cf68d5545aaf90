"""Every ``reverse-http ...`` command line in README.md and the docs is one the CLI takes.

Each command found in a shell code block (``sh``, ``bash``, ``shell``, ``console``) or an
inline code span of the Markdown files below is parsed against the real click command
tree: the sub-command path must exist, every flag must be one of that command's (with a
value where it needs one), there are no stray arguments (``...`` stands for flags left
out). Its ``--help`` must then list those flags. The commands that need nothing but a
directory, ``auth ...`` and ``version``, are also run, in document order, in one scratch
directory per file, and must succeed; the daemons and ``demo`` (ports, peers) are not.
A block preceded by ``<!-- docs: not runnable -->`` is only parsed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer._click.core import Command
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from reverse_http.cli.main import PROG_NAME, app

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "docs").glob("*/*.md"),
     ROOT / "compose" / "README.md"]
)  # fmt: skip
SHELL_BLOCK = re.compile(
    r"(?P<marker><!-- docs: not runnable -->\s*)?^```(?:sh|bash|shell|console)\n(?P<body>.*?)^```",
    re.S | re.M,
)
INLINE = re.compile(r"(?<!`)`([^`\n]*\breverse-http [^`\n]*)`(?!`)")
#: Runnable on one machine: no ports, no peers.
RUNNABLE = (("auth",), ("version",))


@dataclass(frozen=True)
class DocCommand:
    doc: Path
    line: int
    argv: tuple[str, ...]
    runnable: bool
    #: In prose (an inline code span): it may name a command group or a flag without its
    #: value (``reverse-http auth``, ``... --agent-id``); it is run only if it is complete.
    inline: bool = False

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}: reverse-http {shlex.join(self.argv)}"


def simple_commands(text: str) -> list[list[str]]:
    """The commands of one shell line, split at ``;``, ``&&``, ``||``, ``|`` and ``$( )``."""
    out = []
    for part in re.split(r"\$\(|\)|;|&&|\|\||\|", text):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:  # a quote opened in another part: not a command of ours
            continue
        while words and (
            re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in ("sudo", "exec")
        ):
            words = words[1:]
        if words and Path(words[0]).name == PROG_NAME:
            out.append(words[1:])
    return out


def doc_commands(doc: Path) -> list[DocCommand]:
    text = doc.read_text(encoding="utf-8")
    found: list[tuple[int, DocCommand]] = []
    for block in SHELL_BLOCK.finditer(text):
        runnable_block = block.group("marker") is None
        body = block.group("body")
        start = text.count("\n", 0, block.start("body")) + 1
        logical = ""
        for offset, raw in enumerate(body.splitlines()):
            line = raw.removeprefix("$ ")
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            for argv in simple_commands(logical):
                command = DocCommand(
                    doc, start + offset, tuple(argv), runnable_block and runs(argv)
                )
                found.append((block.start("body") + offset, command))
            logical = ""
    for span in INLINE.finditer(text):
        line = text.count("\n", 0, span.start()) + 1
        for argv in simple_commands(span.group(1)):
            complete = runs(argv) and parses(tuple(argv))
            found.append((span.start(), DocCommand(doc, line, tuple(argv), complete, True)))
    return [command for _, command in sorted(found, key=lambda item: item[0])]


def runs(argv: list[str]) -> bool:
    words = tuple(w for w in argv if not w.startswith("-"))
    return "..." not in argv and any(words[: len(prefix)] == prefix for prefix in RUNNABLE)


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction itself works: a broken pattern must not make the checks vacuous."""
    paths = {command.argv[:1] for command in ALL}
    assert {("proxy",), ("agent",), ("lb",), ("auth",), ("demo",), ("version",)} <= paths
    assert sum(command.runnable for command in ALL) >= 8


def find_option(command: Command, name: str) -> TyperOption | None:
    for param in command.params:
        if isinstance(param, TyperOption) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def parses(argv: tuple[str, ...]) -> bool:
    try:
        resolve(argv)
    except AssertionError:
        return False
    return True


def resolve(
    argv: tuple[str, ...], *, mention: bool = False
) -> tuple[list[str], Command, list[str]]:
    """``(sub-command path, command, flags used)``; AssertionError for anything unknown.

    ``mention``: a group or a flag without its value is fine (prose names them).
    """
    command: Command = typer.main.get_command(app)
    path: list[str] = []
    used: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "...":
            continue
        if word in ("--help", "-h"):
            used.append(word)
            continue
        if word.startswith("-"):
            name, eq, _value = word.partition("=")
            option = find_option(command, name)
            assert option is not None, f"{' '.join(path) or PROG_NAME} has no {name}"
            used.append(name)
            if not option.is_flag and not eq:
                if words and not words[0].startswith("--"):
                    words.pop(0)
                else:
                    assert mention, f"{name} needs a value"
            elif option.is_flag and eq:
                assert name in option.opts and option.secondary_opts, f"{word}: no value"
            continue
        assert isinstance(command, TyperGroup), f"{' '.join(path)}: unexpected argument {word!r}"
        sub = command.commands.get(word)
        assert sub is not None, f"{' '.join(path) or PROG_NAME} has no command {word!r}"
        path.append(word)
        command = sub
    assert mention or not isinstance(command, TyperGroup) or "--help" in used, (
        f"{path}: a group, not a command"
    )
    return path, command, used


ALL = [command for doc in DOCS for command in doc_commands(doc)]


@pytest.mark.parametrize("command", ALL, ids=str)
def test_documented_command_parses(command: DocCommand) -> None:
    path, _cmd, used = resolve(command.argv, mention=command.inline)
    result = CliRunner().invoke(app, [*path, "--help"], prog_name=PROG_NAME)
    assert result.exit_code == 0, result.output
    for flag in used:
        if flag not in ("--help", "-h"):
            assert flag in result.stdout, f"{command}: {flag} not in --help"


@pytest.mark.parametrize("doc", [d for d in DOCS if any(c.runnable for c in doc_commands(d))],
                         ids=lambda d: str(d.relative_to(ROOT)))  # fmt: skip
def test_runnable_documented_commands_succeed(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in doc_commands(doc):
        if not command.runnable:
            continue
        for flag, value in zip(command.argv, command.argv[1:], strict=False):
            if flag in ("--out", "-o") and value != "-":  # the docs create these with mkdir
                Path(value).parent.mkdir(parents=True, exist_ok=True)
        result = runner.invoke(app, list(command.argv), prog_name=PROG_NAME)
        assert result.exit_code == 0, f"{command}: {result.output}"
