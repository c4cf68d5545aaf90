"""``reverse-http version`` and ``version -V``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from reverse_http import __version__, _build
from reverse_http.cli.main import app, main


def test_version_plain() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout == f"{__version__}\n"


@pytest.mark.parametrize("flag", ["-V", "--verbose"])
def test_version_verbose_json(flag: str) -> None:
    result = CliRunner().invoke(app, ["version", flag])
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout) == {
        "version": __version__,
        "commit": _build.COMMIT,
        "date": _build.DATE,
    }


def test_version_json_matches_go_encoder_layout() -> None:
    """Go's json.Encoder on a map: sorted keys, no spaces, one line."""
    result = CliRunner().invoke(app, ["version", "-V"])
    assert result.stdout == (
        json.dumps(
            {"commit": _build.COMMIT, "date": _build.DATE, "version": __version__},
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
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["reverse-http version: No such option: --nope"]
