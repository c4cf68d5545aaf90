"""The ``reverse-http`` console script.

:func:`main` answers ``--version`` and ``version [-V]`` before importing the command
line itself (typer, the daemons, aioquic: most of a second), so that scripts and
package managers asking for the version get it at once; everything else goes to
:func:`reverse_http.cli.main.main`, with the daemons' garbage-collector thresholds set
first (see :func:`reverse_http.gctuning.defer_collections`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

__all__ = ["main", "version_text"]

_PLAIN = (["--version"], ["version"])
_VERBOSE = (["version", "-V"], ["version", "--verbose"])


def version_text(verbose: bool) -> str:
    """``0.1.0``, or version, commit and date as one line of JSON (Go's encoder layout)."""
    if not verbose:
        from .. import __version__

        return __version__
    from ..buildinfo import build_info

    info = build_info()
    fields = {"commit": info.commit, "date": info.date, "version": info.version}
    return json.dumps(fields, separators=(",", ":"), sort_keys=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in _PLAIN or args in _VERBOSE:
        sys.stdout.write(version_text(args in _VERBOSE) + "\n")
        return
    from ..gctuning import defer_collections

    defer_collections()
    from .main import main as full_main

    full_main(args)
