"""Build metadata shown by ``reverse-http version -V``; release builds overwrite this file."""

from __future__ import annotations

COMMIT = "unknown"
DATE = "unknown"
