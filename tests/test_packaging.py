"""Every runtime dependency in pyproject.toml is imported by the package (defect:
httpx was installed on every host and used by nothing at run time)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Distribution name -> the module it provides, where they differ.
MODULES = {"python-jose": "jose", "pyyaml": "yaml", "prometheus-client": "prometheus_client"}


def test_every_runtime_dependency_is_used_by_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\[<>=!~ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]]
    source = "\n".join(p.read_text() for p in (ROOT / "reverse_http").rglob("*.py"))
    unused = []
    for name in names:
        module = MODULES.get(name, name.replace("-", "_"))
        if not re.search(rf"^\s*(from|import) {re.escape(module)}\b", source, re.MULTILINE):
            unused.append(name)
    assert unused == []
    assert "httpx" not in names  # a test dependency only
