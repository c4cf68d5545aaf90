"""Which build is running: version, commit and date, for ``version -V`` and ``*_build_info``.

A release build writes the commit into :mod:`._build`. Otherwise the commit is found
where pip left it: ``direct_url.json`` of the installed distribution names the commit of
a ``pip install git+...``, or the source directory of a local (editable) install, whose
git checkout is asked. Standard library only and no import of the rest of the package,
so ``reverse-http --version`` stays fast.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import __version__, _build

__all__ = ["BuildInfo", "build_info"]

UNKNOWN = "unknown"
DISTRIBUTION = "reverse-http"
GIT_TIMEOUT = 2.0


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    date: str


@functools.cache
def build_info() -> BuildInfo:
    """This build's version, commit and date ("unknown" where nobody recorded them)."""
    if _build.COMMIT != UNKNOWN:
        return BuildInfo(__version__, _build.COMMIT, _build.DATE)
    commit, date, source = _from_direct_url()
    if commit == UNKNOWN:
        for directory in (source, Path(__file__).resolve().parent.parent):
            if directory is not None:
                commit, date = _from_checkout(directory)
                if commit != UNKNOWN:
                    break
    return BuildInfo(__version__, commit, date if date != UNKNOWN else _build.DATE)


def _from_direct_url() -> tuple[str, str, Path | None]:
    """(commit, date, local source directory) from pip's record of where it installed from."""
    from importlib import metadata

    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return UNKNOWN, UNKNOWN, None
    try:
        record = json.loads(text or "{}")
    except ValueError:
        return UNKNOWN, UNKNOWN, None
    vcs = record.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("commit_id"), str):
        return vcs["commit_id"], UNKNOWN, None
    url = urlparse(str(record.get("url", "")))
    if url.scheme == "file":
        return UNKNOWN, UNKNOWN, Path(unquote(url.path))
    return UNKNOWN, UNKNOWN, None


def _from_checkout(directory: Path) -> tuple[str, str]:
    """HEAD's commit and commit date if ``directory`` is the top of a git checkout."""
    if not (directory / ".git").exists() or not (directory / "reverse_http").is_dir():
        return UNKNOWN, UNKNOWN
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), "log", "-1", "--format=%H %cI"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 2:
        return UNKNOWN, UNKNOWN
    return parts[0], parts[1]
