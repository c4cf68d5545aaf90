"""``reverse-http version`` and ``version -V``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reverse_http import __version__
from reverse_http.buildinfo import build_info
from reverse_http.cli.main import app, main
from tests.ha_cluster import reverse_http_exe

REPO = Path(__file__).resolve().parent.parent


def test_version_plain() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout == f"{__version__}\n"


@pytest.mark.parametrize("flag", ["-V", "--verbose"])
def test_version_verbose_json(flag: str) -> None:
    result = CliRunner().invoke(app, ["version", flag])
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1
    info = build_info()
    assert json.loads(result.stdout) == {
        "version": __version__,
        "commit": info.commit,
        "date": info.date,
    }


def test_version_json_matches_go_encoder_layout() -> None:
    """Go's json.Encoder on a map: sorted keys, no spaces, one line."""
    result = CliRunner().invoke(app, ["version", "-V"])
    assert result.stdout == (
        json.dumps(
            {"commit": build_info().commit, "date": build_info().date, "version": __version__},
            separators=(",", ":"),
        )
        + "\n"
    )


def test_main_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["version"])
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out == f"{__version__}\n"


def test_unknown_version_flag_is_one_line() -> None:
    result = CliRunner().invoke(app, ["version", "--nope"], prog_name="reverse-http")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["reverse-http version: No such option: --nope"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log.level=bogus", "version"], "version: --log.level: 'bogus' is not one of trace,"),
        (["--log.format=xml", "auth", "key", "private"], "auth: --log.format: 'xml' is not one"),
    ],
)
def test_log_flags_before_a_command_that_does_not_log_are_checked(
    args: list[str], message: str
) -> None:
    """As the Go reference (kong) checks them; the command then does not run."""
    result = CliRunner().invoke(app, args, prog_name="reverse-http")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"reverse-http {message}")


def test_commit_of_a_git_checkout_is_shown() -> None:
    """Run from a checkout (or installed from one), the commit is HEAD's, not "unknown"."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    done = subprocess.run(
        [*reverse_http_exe(), "version", "-V"], capture_output=True, text=True, check=True
    )
    shown = json.loads(done.stdout)
    assert shown["commit"] == head
    assert shown["date"] != "unknown"


@pytest.mark.parametrize("args", [["--version"], ["version"], ["version", "-V"]])
def test_version_answers_without_importing_the_cli(args: list[str]) -> None:
    """The console script answers before typer, aioquic or the daemons are imported."""
    code = (
        "import sys; from reverse_http.cli import main; main(sys.argv[1:]); "
        "heavy = [m for m in ('typer', 'aioquic', 'trio', 'cryptography', "
        "'reverse_http.cli.main') if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    first, last = done.stdout.splitlines()
    assert last == "[]"
    assert first == __version__ or json.loads(first)["version"] == __version__


def test_version_flag_on_the_full_cli() -> None:
    """``--version`` is also a root option (listed in --help, works after global flags)."""
    result = CliRunner().invoke(app, ["--log.level", "debug", "--version"])
    assert result.exit_code == 0
    assert result.stdout == f"{__version__}\n"
    assert "--version" in CliRunner().invoke(app, ["--help"]).stdout


@pytest.mark.parametrize("kind", ["ProxyMetrics", "LbMetrics", "AgentMetrics"])
def test_build_info_metric_names_the_same_build(kind: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    import reverse_http.metrics as metrics_module

    metrics = getattr(metrics_module, kind)()
    text = metrics.exposition().decode()
    samples = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "reverse_http_build_info"
    ]
    info = build_info()
    assert [(s.labels, s.value) for s in samples] == [
        ({"version": __version__, "commit": info.commit}, 1.0)
    ]
