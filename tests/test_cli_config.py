"""CLI flags, environment, config files -> ProxyConfig / AgentConfig, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from reverse_http.cli import main as cli_main
from reverse_http.cli import options
from reverse_http.cli.main import app
from reverse_http.config import AgentConfig, LbConfig, ListenAddress, LogConfig, ProxyConfig
from reverse_http.devcerts import CertFiles
from reverse_http.errors import ConfigError

SECRET = "eyJhbGciOiJFUzI1NiJ9.SECRET-PAYLOAD.SECRET-SIGNATURE"


@dataclass
class Captured:
    configs: list[Any] = field(default_factory=list)
    logs: list[LogConfig] = field(default_factory=list)
    #: Raised by the fake daemon instead of returning.
    raise_exc: BaseException | None = None

    @property
    def proxy(self) -> ProxyConfig:
        assert len(self.configs) == 1
        config = self.configs[0]
        assert isinstance(config, ProxyConfig)
        return config

    @property
    def lb(self) -> LbConfig:
        assert len(self.configs) == 1
        config = self.configs[0]
        assert isinstance(config, LbConfig)
        return config

    @property
    def agent(self) -> AgentConfig:
        assert len(self.configs) == 1
        config = self.configs[0]
        assert isinstance(config, AgentConfig)
        return config


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No stray environment or config file may leak into a test."""
    for name in list(os.environ):
        if name.startswith("REVERSE_HTTP_") or name in ("LOG_LEVEL", "LOG_FORMAT"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(
        options,
        "CONFIG_SEARCH_PATHS",
        (
            str(tmp_path / "etc" / "config.yaml"),
            str(tmp_path / "etc" / "config.json"),
            "~/.reverse-http.yaml",
            "~/.reverse-http.json",
        ),
    )
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Replace the daemons (and logging set-up) with recorders."""
    cap = Captured()

    async def fake_daemon(config: Any, **_kwargs: Any) -> None:
        cap.configs.append(config)
        if cap.raise_exc is not None:
            raise cap.raise_exc

    proxy_mod = types.ModuleType("reverse_http.proxy.server")
    proxy_mod.run_proxy = fake_daemon  # type: ignore[attr-defined]
    agent_mod = types.ModuleType("reverse_http.agent.client")
    agent_mod.run_agent = fake_daemon  # type: ignore[attr-defined]
    lb_mod = types.ModuleType("reverse_http.lb.server")
    lb_mod.run_lb = fake_daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "reverse_http.proxy.server", proxy_mod)
    monkeypatch.setitem(sys.modules, "reverse_http.agent.client", agent_mod)
    monkeypatch.setitem(sys.modules, "reverse_http.lb.server", lb_mod)
    monkeypatch.setattr(cli_main, "setup_logging", cap.logs.append)
    return cap


def invoke(args: Sequence[str], env: Mapping[str, str] | None = None) -> Run:
    result = CliRunner().invoke(app, list(args), env=dict(env or {}), prog_name="reverse-http")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def ok(args: Sequence[str], env: Mapping[str, str] | None = None) -> Run:
    run = invoke(args, env)
    assert run.exit_code == 0, run.stderr
    return run


def fails(args: Sequence[str], *needles: str, env: Mapping[str, str] | None = None) -> str:
    """Exit 2, exactly one line on stderr, containing every needle; returns the line."""
    run = invoke(args, env)
    assert run.exit_code == 2, (run.exit_code, run.stdout, run.stderr)
    assert len(run.error_lines) == 1, run.stderr
    line = run.error_lines[0]
    for needle in needles:
        assert needle in line, line
    assert "Traceback" not in run.stderr
    return line


AGENT_OK = ["agent", "--auth.noauth.agent-id=4711"]


# ------------------------------------------------------------------ table sanity


@pytest.mark.parametrize("command", ["proxy", "agent", "lb"])
def test_signatures_match_flag_table(command: str) -> None:
    """The typer signatures in main.py carry the table's names, defaults and env vars."""
    import typer.main

    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    params = {p.name: p for p in cmd.params if p.name not in ("config", "help")}
    table = options.COMMANDS[command]
    assert set(params) == {options.param_name(f.name) for f in table}
    for flag in table:
        param = params[options.param_name(flag.name)]
        assert f"--{flag.name}" in param.opts
        envvar = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        assert envvar == list(flag.envvars)
        expected = flag.default if flag.kind != "list" else None
        assert param.default == expected, flag.name


def test_env_var_names() -> None:
    assert options.env_var("agent-server.listen-address") == (
        "REVERSE_HTTP_AGENT_SERVER_LISTEN_ADDRESS"
    )
    assert options.env_var("auth.jwt.token") == "REVERSE_HTTP_AUTH_JWT_TOKEN"


# ---------------------------------------------------------------------- defaults


def test_proxy_defaults(captured: Captured) -> None:
    ok(["proxy"])
    config = captured.proxy
    assert config.agent_listen == ListenAddress("", 4242)
    assert config.http_listen == ListenAddress("", 3128)
    assert config.agent_tls is None
    assert config.http_tls is None
    assert config.agent_dial_timeout == 10.0
    assert config.shutdown_grace_period == 30.0
    assert config.host_whitelist.allows_all
    assert config.auth.type == "noauth"
    assert config.store.type == "none"
    assert config.store.memcached_addresses == ("localhost:11211",)
    assert config.store.memcached_timeout == 1.0
    assert captured.logs == [LogConfig(level="info", format="text")]


def test_agent_defaults(captured: Captured) -> None:
    ok(AGENT_OK)
    config = captured.agent
    assert (config.server_host, config.server_port) == ("localhost", 4242)
    assert config.credentials.type == "noauth"
    assert config.credentials.agent_id == "4711"
    assert config.tls.insecure_skip_verify is False
    assert config.tls.root_ca_file is None
    assert config.host_whitelist.allows_all


def test_lb_defaults(captured: Captured) -> None:
    ok(["lb"])
    config = captured.lb
    assert config.http_listen == ListenAddress("", 3129)
    assert config.store.type == "memcached"
    assert config.store.memcached_addresses == ("localhost:11211",)
    assert config.store.http_proxy_address is None
    assert config.connector_tls.enable is False
    assert config.auth.type == "noauth"


def test_lb_flags_reach_config(captured: Captured, certs: CertFiles) -> None:
    ok(
        [
            "lb",
            "--http-proxy.listen-address=127.0.0.1:0",
            "--http-proxy.host-whitelist=*.example",
            "--http-connector.tls.enable",
            "--http-connector.tls.insecure-skip-verify=true",
            f"--http-connector.tls.file.root-ca={certs.ca_cert}",
            f"--http-connector.tls.file.cert={certs.cert}",
            f"--http-connector.tls.file.key={certs.key}",
            "--store.memcached.address=127.0.0.1:11311",
            "--store.memcached.timeout=2s",
            "--shutdown-grace-period=3s",
        ]
    )
    config = captured.lb
    assert config.http_listen == ListenAddress("127.0.0.1", 0)
    assert str(config.host_whitelist) == "*.example"
    assert config.connector_tls.enable is True
    assert config.connector_tls.insecure_skip_verify is True
    assert config.connector_tls.root_ca_file == certs.ca_cert
    assert config.connector_tls.cert_file == certs.cert
    assert config.connector_tls.key_file == certs.key
    assert config.store.memcached_addresses == ("127.0.0.1:11311",)
    assert config.store.memcached_timeout == 2.0
    assert config.shutdown_grace_period == 3.0


def test_lb_errors(captured: Captured, certs: CertFiles) -> None:
    fails(["lb", "--store.type=none"], "--store.type", '"none"')
    fails(["lb", "--agent-server.listen-address=:1"], "--agent-server.listen-address")
    fails(
        ["lb", f"--http-connector.tls.file.key={certs.key}"],
        "--http-connector.tls.file.key requires --http-connector.tls.file.cert",
    )
    assert captured.configs == []


def test_file_section_for_lb(captured: Captured, tmp_path: Path) -> None:
    path = write(
        tmp_path / "lb.yaml",
        {"http-proxy": {"listen-address": ":3128"}, "lb": {"http-proxy.listen-address": ":9"}},
    )
    ok(["lb", "--config", str(path)])
    assert captured.lb.http_listen == ListenAddress("", 9)
    captured.configs.clear()
    ok(["proxy", "--config", str(path)])
    assert captured.proxy.http_listen == ListenAddress("", 3128)


# -------------------------------------------------------------- flags, env, file


def test_proxy_flags_reach_config(captured: Captured, certs: CertFiles, tmp_path: Path) -> None:
    pub = tmp_path / "pub.pem"
    pub.write_text("key")
    ok(
        [
            "proxy",
            "--agent-server.listen-address=127.0.0.1:0",
            "--agent-server.tls.file.key",
            str(certs.key),
            f"--agent-server.tls.file.cert={certs.cert}",
            f"--agent-server.tls.file.client-ca={certs.ca_cert}",
            "--agent-server.tls.refresh=1m",
            "--agent-server.agent.dial-timeout=1h30m",
            "--http-proxy.listen-address=[::1]:8080",
            "--http-proxy.tls.enable",
            f"--http-proxy.tls.file.key={certs.key}",
            f"--http-proxy.tls.file.cert={certs.cert}",
            "--http-proxy.host-whitelist=example.com:443,10.0.0.0/8",
            "--http-proxy.host-whitelist",
            "*.internal",
            "--auth.type=jwt",
            f"--auth.jwt.public-key={pub}",
            "--auth.jwt.audience=aud",
            "--store.type=memcached",
            "--store.memcached.address=m1:11211, m2:11211",
            "--store.memcached.timeout=500ms",
            "--store.http-proxy-address=10.1.1.1:3128",
            "--shutdown-grace-period=5s",
            "--log.level=debug",
            "--log.format=json",
        ]
    )
    config = captured.proxy
    assert config.agent_listen == ListenAddress("127.0.0.1", 0)
    assert config.agent_tls is not None
    assert config.agent_tls.key_file == certs.key
    assert config.agent_tls.cert_file == certs.cert
    assert config.agent_tls.client_ca_file == certs.ca_cert
    assert config.agent_tls_refresh == 60.0
    assert config.agent_dial_timeout == 5400.0
    assert config.http_listen == ListenAddress("::1", 8080)
    assert config.http_tls is not None
    assert config.http_tls.key_file == certs.key
    assert str(config.host_whitelist) == "example.com:443,10.0.0.0/8,*.internal"
    assert config.auth.type == "jwt"
    assert config.auth.jwt_public_key == pub
    assert config.auth.jwt_audience == "aud"
    assert config.store.type == "memcached"
    assert config.store.memcached_addresses == ("m1:11211", "m2:11211")
    assert config.store.memcached_timeout == 0.5
    assert config.store.http_proxy_address == "10.1.1.1:3128"
    assert config.shutdown_grace_period == 5.0
    assert captured.logs == [LogConfig(level="debug", format="json")]


def test_agent_flags_reach_config(captured: Captured, certs: CertFiles) -> None:
    ok(
        [
            "agent",
            "--agent-client.server-address",
            "[::1]:4343",
            "--agent-client.host-whitelist=localhost:80",
            "--agent-client.host-whitelist=127.0.0.1",
            f"--agent-client.tls.file.root-ca={certs.ca_cert}",
            f"--agent-client.tls.file.cert={certs.cert}",
            f"--agent-client.tls.file.key={certs.key}",
            "--agent-client.tls.insecure-skip-verify",
            "--agent-client.tls.refresh=10s",
            "--auth.type=jwt",
            f"--auth.jwt.token={SECRET}",
        ]
    )
    config = captured.agent
    assert (config.server_host, config.server_port) == ("::1", 4343)
    assert str(config.host_whitelist) == "localhost:80,127.0.0.1"
    assert config.tls.root_ca_file == certs.ca_cert
    assert config.tls.cert_file == certs.cert
    assert config.tls.key_file == certs.key
    assert config.tls.insecure_skip_verify is True
    assert config.credentials.type == "jwt"
    assert config.credentials.token == SECRET


def test_env_reaches_config(captured: Captured) -> None:
    ok(
        ["proxy"],
        env={
            "REVERSE_HTTP_AGENT_SERVER_LISTEN_ADDRESS": "127.0.0.2:4000",
            "REVERSE_HTTP_HTTP_PROXY_HOST_WHITELIST": "a.example:443,b.example",
            "REVERSE_HTTP_HTTP_PROXY_TLS_ENABLE": "false",
            "REVERSE_HTTP_SHUTDOWN_GRACE_PERIOD": "2s",
            "REVERSE_HTTP_LOG_LEVEL": "warn",
        },
    )
    config = captured.proxy
    assert config.agent_listen == ListenAddress("127.0.0.2", 4000)
    assert str(config.host_whitelist) == "a.example:443,b.example"
    assert config.shutdown_grace_period == 2.0
    assert captured.logs == [LogConfig(level="warn", format="text")]


def test_agent_env_reaches_config(captured: Captured) -> None:
    ok(
        ["agent"],
        env={
            "REVERSE_HTTP_AUTH_TYPE": "jwt",
            "REVERSE_HTTP_AUTH_JWT_TOKEN": SECRET,
            "REVERSE_HTTP_AGENT_CLIENT_SERVER_ADDRESS": "proxy.example:443",
            "REVERSE_HTTP_AGENT_CLIENT_TLS_INSECURE_SKIP_VERIFY": "true",
        },
    )
    config = captured.agent
    assert config.credentials.token == SECRET
    assert (config.server_host, config.server_port) == ("proxy.example", 443)
    assert config.tls.insecure_skip_verify is True


def test_legacy_log_env_of_the_go_reference(captured: Captured) -> None:
    ok(["proxy"], env={"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"})
    assert captured.logs == [LogConfig(level="debug", format="json")]
    captured.configs.clear()
    ok(["proxy"], env={"LOG_LEVEL": "debug", "REVERSE_HTTP_LOG_LEVEL": "error"})
    assert captured.logs[1] == LogConfig(level="error", format="text")


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    return path


FLAT = {
    "agent-server.listen-address": "127.0.0.3:4001",
    "http-proxy.host-whitelist": ["a.example", "b.example:80"],
    "agent-server.agent.dial-timeout": "3s",
    "log.level": "debug",
}
NESTED = {
    "agent-server": {"listen-address": "127.0.0.3:4001", "agent": {"dial-timeout": "3s"}},
    "http-proxy": {"host-whitelist": "a.example,b.example:80"},
    "log": {"level": "debug"},
}


@pytest.mark.parametrize("layout", [FLAT, NESTED], ids=["flat", "nested"])
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_reaches_config(
    captured: Captured, tmp_path: Path, layout: dict[str, object], suffix: str
) -> None:
    path = write(tmp_path / f"conf{suffix}", layout)
    ok(["proxy", "--config", str(path)])
    config = captured.proxy
    assert config.agent_listen == ListenAddress("127.0.0.3", 4001)
    assert config.agent_dial_timeout == 3.0
    assert str(config.host_whitelist) == "a.example,b.example:80"
    assert captured.logs[0].level == "debug"


def test_file_go_reference_layouts(captured: Captured, tmp_path: Path) -> None:
    """Kong's JSON loader uses ``_`` for ``-``; kong-yaml nests under the command name."""
    path = write(
        tmp_path / "go.json",
        {"agent_server": {"listen_address": "127.0.0.4:1"}, "shutdown_grace_period": "1s"},
    )
    ok(["proxy", "--config", str(path)])
    assert captured.proxy.agent_listen == ListenAddress("127.0.0.4", 1)
    assert captured.proxy.shutdown_grace_period == 1.0

    captured.configs.clear()
    path = write(
        tmp_path / "go.yaml",
        {
            "proxy": {"agent-server.listen-address": "127.0.0.5:2"},
            "agent": {"auth.noauth.agent-id": "from-section"},
            "agent-server.listen-address": "127.0.0.6:3",
        },
    )
    ok(["proxy", "--config", str(path)])
    assert captured.proxy.agent_listen == ListenAddress("127.0.0.5", 2)
    captured.configs.clear()
    ok(["agent", "--config", str(path)])
    assert captured.agent.credentials.agent_id == "from-section"


def test_file_may_hold_keys_for_both_commands(captured: Captured, tmp_path: Path) -> None:
    path = write(
        tmp_path / "both.yaml",
        {
            "agent-server": {"listen-address": "127.0.0.3:4001"},
            "agent-client": {"server-address": "proxy.example:4242"},
            "auth": {"type": "noauth", "noauth": {"agent-id": "a1"}},
            "http-proxy.tls.enable": False,
        },
    )
    ok(["agent", "--config", str(path)])
    assert captured.agent.credentials.agent_id == "a1"
    assert captured.agent.server_host == "proxy.example"
    captured.configs.clear()
    ok(["proxy", "--config", str(path)])
    assert captured.proxy.agent_listen == ListenAddress("127.0.0.3", 4001)


def test_file_bool_values(captured: Captured, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"agent-client.tls.insecure-skip-verify": True})
    ok([*AGENT_OK, "--config", str(path)])
    assert captured.agent.tls.insecure_skip_verify is True


def test_config_from_env_and_search_path(captured: Captured, tmp_path: Path) -> None:
    path = write(tmp_path / "by-env.json", {"agent-server.listen-address": ":1111"})
    ok(["proxy"], env={"REVERSE_HTTP_CONFIG": str(path)})
    assert captured.proxy.agent_listen == ListenAddress("", 1111)

    captured.configs.clear()
    write(Path(os.environ["HOME"]) / ".reverse-http.json", {"agent-server.listen-address": ":2"})
    ok(["proxy"])
    assert captured.proxy.agent_listen == ListenAddress("", 2)

    captured.configs.clear()
    write(tmp_path / "etc" / "config.yaml", {"agent-server.listen-address": ":3"})
    ok(["proxy"])  # /etc comes first
    assert captured.proxy.agent_listen == ListenAddress("", 3)

    captured.configs.clear()
    ok(["proxy", "--config="])  # '' disables the search
    assert captured.proxy.agent_listen == ListenAddress("", 4242)


# -------------------------------------------------------------------- precedence


def test_precedence_flag_env_file_default(captured: Captured, tmp_path: Path) -> None:
    name = "agent-server.listen-address"
    env_name = options.env_var(name)
    path = write(tmp_path / "p.yaml", {name: ":1001"})

    def listen(args: list[str], env: dict[str, str]) -> int:
        captured.configs.clear()
        ok(["proxy", *args], env=env)
        return captured.proxy.agent_listen.port

    assert listen([], {}) == 4242
    assert listen(["--config", str(path)], {}) == 1001
    assert listen(["--config", str(path)], {env_name: ":1002"}) == 1002
    assert listen(["--config", str(path), f"--{name}=:1003"], {env_name: ":1002"}) == 1003
    assert listen([f"--{name}", ":1003"], {env_name: ":1002"}) == 1003


def test_precedence_for_lists_and_bools(captured: Captured, tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.yaml",
        {
            "agent-client.host-whitelist": ["file.example"],
            "agent-client.tls.insecure-skip-verify": True,
        },
    )
    env = {
        "REVERSE_HTTP_AGENT_CLIENT_HOST_WHITELIST": "env.example",
        "REVERSE_HTTP_AGENT_CLIENT_TLS_INSECURE_SKIP_VERIFY": "true",
    }

    ok([*AGENT_OK, "--config", str(path)])
    assert str(captured.agent.host_whitelist) == "file.example"
    assert captured.agent.tls.insecure_skip_verify is True

    captured.configs.clear()
    ok([*AGENT_OK, "--config", str(path)], env=env)
    assert str(captured.agent.host_whitelist) == "env.example"

    captured.configs.clear()
    ok(
        [
            *AGENT_OK,
            "--config",
            str(path),
            "--agent-client.host-whitelist=flag.example",
            "--agent-client.tls.insecure-skip-verify=false",
        ],
        env=env,
    )
    assert str(captured.agent.host_whitelist) == "flag.example"
    assert captured.agent.tls.insecure_skip_verify is False


def test_kong_style_bool_values(captured: Captured, certs: CertFiles) -> None:
    tls = [f"--http-proxy.tls.file.key={certs.key}", f"--http-proxy.tls.file.cert={certs.cert}"]
    ok(["proxy", "--http-proxy.tls.enable=true", *tls])
    assert captured.proxy.http_tls is not None
    captured.configs.clear()
    ok(["proxy", "--http-proxy.tls.enable=false", *tls])
    assert captured.proxy.http_tls is None
    captured.configs.clear()
    ok(["proxy", "--no-http-proxy.tls.enable", *tls])
    assert captured.proxy.http_tls is None
    fails(["proxy", "--http-proxy.tls.enable=maybe"], "--http-proxy.tls.enable", '"maybe"')


def test_global_log_flags_before_the_command(captured: Captured) -> None:
    def log_config(args: list[str], env: dict[str, str] | None = None) -> LogConfig:
        captured.logs.clear()
        captured.configs.clear()
        ok(args, env=env)
        assert len(captured.logs) == 1
        return captured.logs[0]

    assert log_config(["--log.level=debug", "--log.format", "json", "proxy"]) == LogConfig(
        level="debug", format="json"
    )
    assert log_config(["--log.level=debug", "proxy", "--log.level=error"]).level == "error"
    assert log_config(["--log.level=debug", "agent", "--auth.noauth.agent-id=a"]).level == "debug"
    # A global flag is still a command-line flag: it beats env and file.
    assert log_config(["--log.level=debug", "proxy"], {"REVERSE_HTTP_LOG_LEVEL": "warn"}).level == (
        "debug"
    )
    assert log_config(["proxy"], {"REVERSE_HTTP_LOG_LEVEL": "warn"}).level == "warn"


# ------------------------------------------------------------------------ errors


def test_unknown_file_key(captured: Captured, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", {"agent-server": {"listen-adress": ":1"}})
    fails(["proxy", "--config", str(path)], str(path), "agent-server.listen-adress")
    path = write(tmp_path / "bad.json", {"proxy": {"auth.noauth.agent-id": "x"}})
    fails(["proxy", "--config", str(path)], str(path), "proxy.auth.noauth.agent-id")
    assert captured.configs == []


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("broken.yaml", "a: [", "invalid YAML"),
        ("broken.json", "{", "invalid JSON"),
        ("list.yaml", "- a\n- b\n", "mapping"),
        ("conf.toml", "a = 1", "unsupported file type"),
        ("shape.yaml", "agent-server.listen-address: [1, 2]\n", "agent-server.listen-address"),
        ("dup.yaml", "log.level: info\nlog: {level: debug}\n", "more than once"),
    ],
)
def test_bad_config_file(
    captured: Captured, tmp_path: Path, name: str, content: str, needle: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    fails(["proxy", "--config", str(path)], needle, str(path))


def test_missing_config_file(captured: Captured, tmp_path: Path) -> None:
    fails(["proxy", "--config", str(tmp_path / "nope.yaml")], "--config", "nope.yaml")


def test_bad_value_from_file_names_the_file(captured: Captured, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"agent-server.agent.dial-timeout": "abc"})
    fails(["proxy", "--config", str(path)], "--agent-server.agent.dial-timeout", '"abc"')
    path = write(tmp_path / "d.yaml", {"http-proxy.tls.enable": "perhaps"})
    fails(["proxy", "--config", str(path)], "http-proxy.tls.enable", str(path))


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--agent-server.listen-address=4242"], ["--agent-server.listen-address", '"4242"']),
        (["--agent-server.listen-address=::1:80"], ["--agent-server.listen-address"]),
        (["--http-proxy.listen-address=:99999"], ["--http-proxy.listen-address", "99999"]),
        (["--http-proxy.listen-address=[zz]:1"], ["--http-proxy.listen-address"]),
        (
            ["--agent-server.agent.dial-timeout=abc"],
            ['--agent-server.agent.dial-timeout: invalid duration "abc"'],
        ),
        (["--agent-server.tls.refresh=10"], ["--agent-server.tls.refresh", '"10"']),
        (["--shutdown-grace-period=-1s"], ["--shutdown-grace-period"]),
        (["--store.memcached.timeout=x"], ["--store.memcached.timeout"]),
        (
            ["--http-proxy.host-whitelist=ok.example,bad pattern!!"],
            ["--http-proxy.host-whitelist", "bad pattern!!"],
        ),
        (["--http-proxy.host-whitelist=*foo"], ["--http-proxy.host-whitelist", "*foo"]),
        (["--agent-server.tls.file.key=k.pem"], ["--agent-server.tls.file.cert"]),
        (["--agent-server.tls.file.cert=c.pem"], ["--agent-server.tls.file.key"]),
        (
            ["--agent-server.tls.file.key=nokey.pem", "--agent-server.tls.file.cert=nocert.pem"],
            ["--agent-server.tls.file.", "no"],
        ),
        (["--agent-server.tls.file.client-ca=ca.pem"], ["--agent-server.tls.file.client-ca"]),
        (["--http-proxy.tls.enable"], ["--http-proxy.tls.file.key", "--http-proxy.tls.file.cert"]),
        (
            [
                "--http-proxy.tls.enable",
                "--http-proxy.tls.file.key=k",
                "--http-proxy.tls.file.cert=c",
            ],
            ["--http-proxy.tls.file.", '"'],
        ),
        (["--auth.type=jwt"], ["--auth.jwt.public-key", "auth-key-public.pem"]),
        (
            ["--auth.type=jwt", "--auth.jwt.public-key=/no/such.pem"],
            ["--auth.jwt.public-key", "/no/such.pem"],
        ),
        (["--auth.type=basic"], ["--auth.type", "basic"]),
        (["--store.type=redis"], ["--store.type", "redis"]),
        (["--store.type=memcached", "--store.memcached.address=nohost"], ["--store.memcached"]),
        (["--log.level=loud"], ["--log.level", "loud"]),
        (["--log.format=xml"], ["--log.format", "xml"]),
        (["--no-such-flag"], ["--no-such-flag"]),
        (["--agent-server.listen-address"], ["--agent-server.listen-address"]),
    ],
)
def test_proxy_validation_errors(captured: Captured, args: list[str], needles: list[str]) -> None:
    line = fails(["proxy", *args], *needles)
    assert line.startswith("reverse-http proxy: ")
    assert captured.configs == []


def test_tls_file_that_is_a_directory(captured: Captured, tmp_path: Path) -> None:
    d = tmp_path / "dir.pem"
    d.mkdir()
    fails(
        ["proxy", f"--agent-server.tls.file.key={d}", f"--agent-server.tls.file.cert={d}"],
        "--agent-server.tls.file.",
        str(d),
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["agent"], ["--auth.noauth.agent-id"]),
        (["agent", "--auth.type=jwt"], ["--auth.jwt.token"]),
        ([*AGENT_OK, "--agent-client.server-address=proxy.example"], ["server-address"]),
        ([*AGENT_OK, "--agent-client.server-address=:4242"], ["server-address"]),
        ([*AGENT_OK, "--agent-client.server-address=h:0"], ["server-address"]),
        ([*AGENT_OK, "--agent-client.host-whitelist=a b"], ["--agent-client.host-whitelist"]),
        ([*AGENT_OK, "--agent-client.tls.file.root-ca=/no/ca.pem"], ["root-ca", "/no/ca.pem"]),
        ([*AGENT_OK, "--agent-client.tls.refresh=soon"], ["--agent-client.tls.refresh"]),
        ([*AGENT_OK, "--agent-client.tls.insecure-skip-verify=maybe"], ["insecure-skip-verify"]),
        (["agent", "--auth.type=jwt", "--auth.jwt.token=file:/no/tok"], ["token", "/no/tok"]),
        (["agent", "--auth.type=jwt", "--auth.jwt.token=file:"], ["--auth.jwt.token"]),
        (["bogus-command"], ["bogus-command"]),
        (["--log.level", "agent"], ["reverse-http: Missing command"]),
        (["--log.level=x", "agent"], ["--log.level", '"x"']),
    ],
)
def test_agent_validation_errors(captured: Captured, args: list[str], needles: list[str]) -> None:
    fails(args, *needles)
    assert captured.configs == []


def test_agent_cert_without_key(captured: Captured, certs: CertFiles) -> None:
    fails(
        [*AGENT_OK, f"--agent-client.tls.file.cert={certs.cert}"],
        "--agent-client.tls.file.key",
    )


# ------------------------------------------------------------------------ tokens


def test_token_from_file(captured: Captured, tmp_path: Path) -> None:
    token_file = tmp_path / "jwt.b64"
    token_file.write_text(f"  {SECRET}\n\n")
    ok(["agent", "--auth.type", "jwt", f"--auth.jwt.token=file:{token_file}"])
    assert captured.agent.credentials.token == SECRET


def test_empty_token_file(captured: Captured, tmp_path: Path) -> None:
    token_file = tmp_path / "empty.b64"
    token_file.write_text("\n")
    fails(["agent", "--auth.type=jwt", f"--auth.jwt.token=file:{token_file}"], "empty")


def test_token_never_in_error_output(captured: Captured, tmp_path: Path) -> None:
    token_file = tmp_path / "jwt.b64"
    token_file.write_text(SECRET)
    bad_cases: list[tuple[list[str], dict[str, str]]] = [
        (
            [
                "agent",
                "--auth.type=jwt",
                f"--auth.jwt.token={SECRET}",
                "--agent-client.server-address=x",
            ],
            {},
        ),
        (["agent", "--auth.type=jwt", f"--auth.jwt.token=file:{token_file}", "--log.level=x"], {}),
        (
            ["agent", "--auth.type=jwt", "--agent-client.tls.refresh=z"],
            {"REVERSE_HTTP_AUTH_JWT_TOKEN": SECRET},
        ),
        (["agent", f"--auth.jwt.tokn={SECRET}"], {}),
        (
            [
                "agent",
                "--auth.type=jwt",
                f"--auth.jwt.token={SECRET}",
                "--agent-client.tls.insecure-skip-verify=?",
            ],
            {},
        ),
    ]
    for args, env in bad_cases:
        run = invoke(args, env)
        assert run.exit_code == 2, run.stderr
        assert len(run.error_lines) == 1, run.stderr
        assert "SECRET" not in run.stderr + run.stdout, args


# ---------------------------------------------------------------- daemon wiring


def test_daemon_config_error_is_one_line(captured: Captured) -> None:
    captured.raise_exc = ConfigError("--agent-server.listen-address :4242: address in use")
    line = fails(["proxy"], "address in use")
    assert line == "reverse-http proxy: --agent-server.listen-address :4242: address in use"


def test_daemon_config_error_in_exception_group(captured: Captured) -> None:
    captured.raise_exc = ExceptionGroup("x", [ConfigError("--http-proxy.listen-address: in use")])
    fails(AGENT_OK, "reverse-http agent: --http-proxy.listen-address: in use")


def test_keyboard_interrupt_exits_130_quietly(captured: Captured) -> None:
    captured.raise_exc = KeyboardInterrupt()
    run = invoke(["proxy"])
    assert run.exit_code == 130
    assert run.stderr == ""


def test_other_daemon_errors_propagate(captured: Captured) -> None:
    captured.raise_exc = RuntimeError("bug")
    with pytest.raises(RuntimeError, match="bug"):
        invoke(["proxy"])


# ------------------------------------------------------------ builders directly


def test_builders_take_partial_values() -> None:
    config = options.build_proxy_config({"agent-server.listen-address": "[::]:1"})
    assert config.agent_listen == ListenAddress("::", 1)
    assert config.http_listen == ListenAddress("", 3128)
    agent = options.build_agent_config({"auth.noauth.agent-id": "x", "auth.type": "NOAUTH"})
    assert agent.credentials.agent_id == "x"
    with pytest.raises(ConfigError, match=r"--auth\.noauth\.agent-id"):
        options.build_agent_config({})


# ------------------------------------------------------- the installed executable


def test_installed_executable(tmp_path: Path) -> None:
    exe = shutil.which("reverse-http")
    assert exe is not None, "reverse-http is not installed (pip install -e .)"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REVERSE_HTTP_") and k not in ("LOG_LEVEL", "LOG_FORMAT")
    }
    env["HOME"] = str(tmp_path)

    bad = subprocess.run(
        [
            exe,
            "proxy",
            "--config=",
            "--agent-server.listen-address=127.0.0.1:0",
            "--http-proxy.host-whitelist=bad pattern!!",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert len(lines) == 1, bad.stderr
    assert lines[0].startswith("reverse-http proxy: --http-proxy.host-whitelist:")
    assert "bad pattern!!" in lines[0]

    version = subprocess.run(
        [exe, "version", "-V"], capture_output=True, text=True, env=env, timeout=60
    )
    assert version.returncode == 0, version.stderr
    info = json.loads(version.stdout)
    assert set(info) == {"version", "commit", "date"}
    from reverse_http import __version__

    assert info["version"] == __version__
