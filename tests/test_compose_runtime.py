"""What the compose setups need at run time, checked without a Docker engine.

The image (compose/Dockerfile) runs as a fixed non-root uid/gid, and the files it mounts
must be readable by it the way compose/README.md says (tried for real, as that uid, on
files made by ``reverse-http auth`` and ``openssl``); every service restarts
``unless-stopped`` and starts after what it needs; the nginx load balancers resolve the
containers' names at run time (checked in the files, and by the real nginx binary).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from reverse_http.cli.main import PROG_NAME, app

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
FILES = sorted(COMPOSE.glob("docker-compose.*.yml"))
DOCKERFILE = COMPOSE / "Dockerfile"
README = COMPOSE / "README.md"
NGINX_CONFS = ("nginx-proxy.conf", "nginx-client.conf")
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
#: Open-source nginx learnt ``server ... resolve`` in upstream blocks in 1.27.3.
RESOLVE_SINCE = (1, 27, 3)


def services(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    result = data["services"]
    assert isinstance(result, dict)
    return result


def ours(service: dict[str, Any]) -> bool:
    """Built from compose/Dockerfile (the others are memcached and nginx images)."""
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "compose/Dockerfile"


def final_stage(dockerfile: str) -> list[str]:
    """The instructions of the last ``FROM`` stage, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


def image_user() -> tuple[int, int]:
    (user,) = [
        line.split()[1] for line in final_stage(DOCKERFILE.read_text()) if line.startswith("USER ")
    ]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: numeric uid:gid, so no passwd lookup"
    return int(uid), int(gid)


# ------------------------------------------------------------------- image and users


def test_image_runs_as_a_non_root_user_from_its_venv() -> None:
    uid, gid = image_user()
    assert uid != 0 and gid != 0
    stage = final_stage(DOCKERFILE.read_text())
    (entrypoint,) = [line for line in stage if line.startswith("ENTRYPOINT ")]
    assert entrypoint == 'ENTRYPOINT ["/opt/reverse-http/venv/bin/reverse-http"]'
    assert any(
        "COPY --from=build /opt/reverse-http/venv /opt/reverse-http/venv" in s for s in stage
    )
    assert any(f"--uid {uid} --gid {gid}" in s for s in stage)
    # the numbers the documentation tells operators to chgrp to
    assert f"chgrp -R {gid} " in README.read_text()


def test_compose_services_run_as_the_image_user_unless_told_otherwise() -> None:
    uid, gid = image_user()
    expected = f"${{REVERSE_HTTP_UID:-{uid}}}:${{REVERSE_HTTP_GID:-{gid}}}"
    for path in FILES:
        for name, service in services(path).items():
            if ours(service):
                assert service.get("user") == expected, f"{path.name} {name}"
    assert "REVERSE_HTTP_UID=$(id -u)" in README.read_text()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another uid can reach (pytest's tmp_path is under a 0700 directory)."""
    with tempfile.TemporaryDirectory(prefix="rh-compose-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def readable_as(uid: int, gid: int, path: Path) -> bool:
    """Can a process of ``uid:gid`` (no supplementary groups, as in the image) read it?"""
    cat = shutil.which("cat") or "/bin/cat"  # this venv's python lives under /root
    probe = subprocess.run(
        [cat, str(path)],
        user=uid,
        group=gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0 and "Permission denied" not in probe.stderr:
        raise AssertionError(probe.stderr)
    return probe.returncode == 0


def documented_permission_commands() -> list[str]:
    """The shell lines of compose/README.md's block marked for this test."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- test: secret permissions -->\s*```sh\n(.*?)```", text, re.S)
    assert match is not None, "compose/README.md lost its secret permissions block"
    return [line for line in match.group(1).splitlines() if line.strip()]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the image's uid")
def test_documented_permissions_let_the_image_user_read_keys_and_tokens(
    shared_dir: Path,
) -> None:
    uid, gid = image_user()
    compose = shared_dir / "compose"
    (compose / "jwt").mkdir(parents=True)
    (compose / "certs").mkdir()
    runner = CliRunner()
    jwt = compose / "jwt"
    for args in (
        ["auth", "key", "private", "--out", str(jwt / "auth-key-private.pem")],
        ["auth", "key", "public", "--in", str(jwt / "auth-key-private.pem"),
         "--out", str(jwt / "auth-key-public.pem")],
        ["auth", "jwt", "token", "--agent-id", "4711", "--role", "agent",
         "--in", str(jwt / "auth-key-private.pem"), "--out", str(jwt / "auth-agent-jwt-4711.b64")],
    ):  # fmt: skip
        result = runner.invoke(app, args, prog_name=PROG_NAME)
        assert result.exit_code == 0, result.output
    key = compose / "certs" / "proxy-key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)  # what openssl -keyout writes
    secrets = [jwt / "auth-key-private.pem", jwt / "auth-agent-jwt-4711.b64", key]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not readable_as(uid, gid, path)  # the defect: 0600 files, foreign uid

    commands = documented_permission_commands()
    script = "\n".join(re.sub(r"^sudo ", "", line) for line in commands)
    subprocess.run(["sh", "-e", "-c", script], cwd=shared_dir, check=True, timeout=30)
    for path in [*secrets, jwt / "auth-key-public.pem"]:
        assert readable_as(uid, gid, path), path
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, f"{path} readable by others"
    # and nobody but the owner and that group
    assert not readable_as(uid + 1, gid + 1, secrets[0])


# ------------------------------------------------------------- restarts and ordering


def test_every_service_restarts_unless_stopped() -> None:
    for path in FILES:
        for name, service in services(path).items():
            assert service.get("restart") == "unless-stopped", f"{path.name} {name}"


EXPECTED_HA_ORDER = {
    "proxy-1": {"memcached-server"},
    "proxy-2": {"memcached-server"},
    "proxy-lb": {"proxy-1", "proxy-2"},
    "agent-4711": {"proxy-lb"},
    "agent-4712": {"proxy-lb"},
    "lb-1": {"memcached-server"},
    "lb-2": {"memcached-server"},
    "http-proxy": {"lb-1", "lb-2"},
}


def depends_on(service: dict[str, Any]) -> set[str]:
    value = service.get("depends_on", [])
    return set(value if isinstance(value, list) else dict(value))


@pytest.mark.parametrize("name", ["docker-compose.ha.yml", "docker-compose.ha-tls.yml"])
def test_ha_services_start_after_what_they_need(name: str) -> None:
    found = services(COMPOSE / name)
    order = {svc: depends_on(spec) for svc, spec in found.items() if depends_on(spec)}
    assert order == EXPECTED_HA_ORDER


@pytest.mark.parametrize("name", ["docker-compose.noauth.yml", "docker-compose.jwt.yml"])
def test_agents_start_after_the_proxy(name: str) -> None:
    found = services(COMPOSE / name)
    for svc, spec in found.items():
        assert depends_on(spec) == ({"proxy"} if svc.startswith("agent-") else set()), svc


def test_dependencies_exist_and_have_no_cycle() -> None:
    for path in FILES:
        found = services(path)
        graph = {svc: depends_on(spec) for svc, spec in found.items()}
        for svc, needs in graph.items():
            assert needs <= set(found), f"{path.name} {svc}: {needs - set(found)}"
        done: set[str] = set()
        while len(done) < len(graph):  # peel off services whose needs are met
            ready = {s for s, needs in graph.items() if s not in done and needs <= done}
            assert ready, f"{path.name}: dependency cycle among {set(graph) - done}"
            done |= ready


# ------------------------------------------------------------------------- nginx


def nginx_statements(text: str) -> list[tuple[list[str], list[Any]]]:
    """A minimal nginx config parser: ``[(words, children)]`` (children for blocks)."""
    tokens = re.findall(r"[{};]|[^\s{};]+", re.sub(r"#[^\n]*", "", text))

    def block(i: int) -> tuple[list[tuple[list[str], list[Any]]], int]:
        out: list[tuple[list[str], list[Any]]] = []
        words: list[str] = []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == ";":
                out.append((words, []))
                words = []
            elif token == "{":
                children, i = block(i)
                out.append((words, children))
                words = []
            elif token == "}":
                assert not words, words
                return out, i
            else:
                words.append(token)
        assert not words, words
        return out, i

    result, _ = block(0)
    return result


def nginx_image_version(path: Path) -> tuple[int, ...]:
    images = [
        s["image"] for s in services(path).values() if str(s.get("image", "")).startswith("nginx:")
    ]
    assert images, path.name
    versions = set()
    for image in images:
        match = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?-alpine", image)
        assert match is not None, image
        versions.add(tuple(int(g or 0) for g in match.groups()))
    (version,) = versions
    return version


@pytest.mark.parametrize("name", ["docker-compose.ha.yml", "docker-compose.ha-tls.yml"])
def test_ha_nginx_image_knows_upstream_resolve(name: str) -> None:
    version = nginx_image_version(COMPOSE / name)
    # a minor tag (1.28) means its newest patch release; 1.27 would need .3 or later
    assert version[:2] > RESOLVE_SINCE[:2] or version >= RESOLVE_SINCE, version


@pytest.mark.parametrize("conf", NGINX_CONFS)
def test_nginx_resolves_upstream_names_at_run_time(conf: str) -> None:
    top = nginx_statements((COMPOSE / conf).read_text())
    (stream,) = [children for words, children in top if words == ["stream"]]
    resolvers = [words for words, _ in stream if words[:1] == ["resolver"]]
    assert resolvers and resolvers[0][1] == "127.0.0.11", resolvers  # Docker's DNS
    assert "valid=5s" in resolvers[0]
    upstreams = [(words, children) for words, children in stream if words[:1] == ["upstream"]]
    assert upstreams
    for words, children in upstreams:
        assert any(w[:1] == ["zone"] for w, _ in children), f"{words}: resolve needs a zone"
        servers = [w for w, _ in children if w[:1] == ["server"]]
        assert len(servers) == 2, servers
        for server in servers:
            assert "resolve" in server[2:], server
            host = server[1].rsplit(":", 1)[0]
            assert not re.fullmatch(r"[\d.]+", host), "a container name, not an address"
    for _words, children in stream:
        for inner, _ in children:
            if inner[:1] == ["proxy_pass"]:
                assert inner[1] in {w[1] for w, _ in upstreams}, inner


def nginx_version(binary: str) -> tuple[int, ...]:
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr + result.stdout)
    assert match is not None, result.stderr
    return tuple(int(g) for g in match.groups())


@pytest.mark.parametrize("conf", NGINX_CONFS)
def test_nginx_accepts_the_config(conf: str, tmp_path: Path) -> None:
    """``nginx -t`` on the file as shipped, with what only a container has replaced.

    An nginx older than 1.27.3 does not know ``resolve`` and resolves names at start
    (there are no proxy-1 or lb-1 here): then ``resolve`` is dropped and the names are
    pointed at loopback, and the rest of the file (resolver, zone, listeners) is still
    checked by nginx's own parser.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.skip("nginx is not installed")
    text = (COMPOSE / conf).read_text()
    if nginx_version(binary) < RESOLVE_SINCE:
        text, dropped = re.subn(r"\s+resolve;", ";", text)
        assert dropped == 2
        text = re.sub(r"server [a-z0-9-]+:", "server 127.0.0.1:", text)
    if NGINX_STREAM_MODULE.exists():
        text = f"load_module {NGINX_STREAM_MODULE};\n{text}"
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    (tmp_path / "logs").mkdir()
    result = subprocess.run(
        [binary, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "error.log"),
         "-c", str(path), "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
