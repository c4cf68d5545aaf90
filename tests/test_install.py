"""The package installs the way README.md says, on a Python without this repository.

A wheel and an sdist are built (``python -m build``: the wheel from the unpacked sdist,
so the sdist must be complete) from exactly the files compose/Dockerfile copies into the
image, and the wheel is installed into a fresh virtual environment (no system
site-packages, dependencies from the package index or pip's cache), whose
``reverse-http`` must run from there; then the README's ``pipx install .``. Downloads
make it slow: integration session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import reverse_http

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "compose" / "Dockerfile"


def image_sources() -> list[str]:
    """What the Dockerfile's build stage copies from the build context (``COPY a b ./``)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources.extend(words[1:-1])
    return sources


def clean_env() -> dict[str, str]:
    """No trace of the development venv or of this checkout on the import path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    return env


def run(
    argv: list[str | Path],
    cwd: Path,
    *,
    extra_env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 240,
) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**clean_env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def fresh_venv(path: Path) -> Path:
    """A new virtual environment of the base interpreter, without system site-packages."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    config = (path / "pyvenv.cfg").read_text(encoding="utf-8")
    assert re.search(r"^include-system-site-packages\s*=\s*false$", config, re.M), config
    return path / "bin"


def test_sdist_and_wheel_build_and_install_into_a_fresh_venv_and_with_pipx(
    tmp_path: Path,
) -> None:
    sources = image_sources()
    assert {"pyproject.toml", "README.md", "reverse_http"} <= set(sources), sources
    src = tmp_path / "src"  # never build in the shared work tree (build/, *.egg-info)
    src.mkdir()
    for name in sources:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, src / name)

    builder = fresh_venv(tmp_path / "build-venv")
    try:
        run([builder / "pip", "install", "--quiet", "build"], tmp_path)
    except AssertionError as exc:
        if "Could not find a version" in str(exc) or "NewConnectionError" in str(exc):
            pytest.skip(f"no package index reachable: {exc}")
        raise
    dist = tmp_path / "dist"
    run([builder / "python", "-m", "build", "--outdir", dist, src], tmp_path)
    version = reverse_http.__version__
    sdist = dist / f"reverse_http-{version}.tar.gz"
    wheel = dist / f"reverse_http-{version}-py3-none-any.whl"
    assert sorted(p.name for p in dist.iterdir()) == sorted([sdist.name, wheel.name])

    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "reverse_http/cli/main.py"} <= members
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = whl.read(f"reverse_http-{version}.dist-info/entry_points.txt").decode()
    packaged = {p.relative_to(ROOT).as_posix() for p in (ROOT / "reverse_http").rglob("*.py")}
    assert packaged <= names, packaged - names  # every module, and no tests
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"reverse-http = {script['reverse-http']}" in entry_points

    bin_dir = fresh_venv(tmp_path / "venv")
    run([bin_dir / "pip", "install", "--quiet", wheel], tmp_path)
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing to import by accident
    elsewhere.mkdir()
    assert run([bin_dir / "reverse-http", "version"], elsewhere).strip() == version
    where = run([bin_dir / "python", "-c", "import reverse_http; print(reverse_http.__file__)"],
                elsewhere).strip()  # fmt: skip
    assert Path(where).is_relative_to(tmp_path / "venv"), where
    key = run([bin_dir / "reverse-http", "auth", "key", "private", "--out", "-"], elsewhere)
    assert key.startswith("-----BEGIN EC PRIVATE KEY-----")

    # README's quick start, `pipx install .` in the checkout, with pipx's own directories
    run([builder / "pip", "install", "--quiet", "pipx"], tmp_path)
    pipx_env = {
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "pipx-bin"),
        "PIPX_MAN_DIR": str(tmp_path / "pipx-man"),
    }
    run([builder / "pipx", "install", "."], src, extra_env=pipx_env)
    command = tmp_path / "pipx-bin" / "reverse-http"
    assert run([command], elsewhere, check=False).count("Usage:") == 1  # no args: help
    assert run([command, "version"], elsewhere).strip() == version
