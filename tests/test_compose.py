"""Every compose service's command line must parse and validate with the real CLI.

There is no Docker engine here, so the containers are not run; instead each
``command:`` is fed to the CLI (daemons replaced by recorders), with the files
it mounts (/certs, /jwt) created in a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reverse_http.auth.jwt import issue_token
from reverse_http.auth.keys import (
    generate_private_key,
    private_key_to_pem,
    public_key_of,
    public_key_to_pem,
)
from reverse_http.config import AgentConfig, LbConfig, ProxyConfig
from reverse_http.devcerts import issue_cert, make_ca
from tests.test_cli_config import Captured, captured, invoke, isolated  # noqa: F401 (fixtures)

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
FILES = sorted(COMPOSE.glob("docker-compose.*.yml"))
EXPECTED = {"proxy": ProxyConfig, "agent": AgentConfig, "lb": LbConfig}


def mounted_files(root: Path) -> None:
    certs = root / "certs"
    certs.mkdir()
    ca, ca_key = make_ca(certs)
    cert, key = issue_cert(certs, ca, ca_key, "proxy", ["proxy", "proxy-1", "proxy-2"])
    assert cert.name == "proxy.pem" and key.name == "proxy-key.pem"
    jwt = root / "jwt"
    jwt.mkdir()
    private = generate_private_key("ES256")
    (jwt / "auth-key-private.pem").write_bytes(private_key_to_pem(private))
    (jwt / "auth-key-public.pem").write_bytes(public_key_to_pem(public_key_of(private)))
    for agent_id in ("4711", "4712"):
        (jwt / f"auth-agent-jwt-{agent_id}.b64").write_text(issue_token(private, agent_id, "agent"))


def commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in FILES:
        services = yaml.safe_load(path.read_text())["services"]
        for name, service in services.items():
            command = service.get("command")
            if command and command[0] in EXPECTED:
                found.append((path.name, name, [str(c) for c in command]))
    return found


def test_every_reference_setup_is_present() -> None:
    names = {p.name for p in FILES}
    assert names == {
        "docker-compose.noauth.yml",
        "docker-compose.jwt.yml",
        "docker-compose.ha.yml",
        "docker-compose.ha-tls.yml",
    }
    assert (COMPOSE / "Dockerfile").is_file()
    for conf in ("nginx-proxy.conf", "nginx-client.conf"):
        assert "stream" in (COMPOSE / conf).read_text()


@pytest.mark.parametrize(("file", "service", "command"), commands())
def test_compose_command_parses(
    file: str,
    service: str,
    command: list[str],
    tmp_path: Path,
    isolated: None,  # noqa: F811
    captured: Captured,  # noqa: F811
) -> None:
    mounted_files(tmp_path)
    args = [
        a.replace("=/certs/", f"={tmp_path}/certs/")
        .replace("=/jwt/", f"={tmp_path}/jwt/")
        .replace("=file:/jwt/", f"=file:{tmp_path}/jwt/")
        for a in command
    ]
    run = invoke(args)
    assert run.exit_code == 0, f"{file} {service}: {run.stderr}"
    assert len(captured.configs) == 1
    assert isinstance(captured.configs[0], EXPECTED[command[0]])
