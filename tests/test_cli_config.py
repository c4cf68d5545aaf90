"""CLI flags, environment, config files -> ProxyConfig / AgentConfig, and one-line errors."""

from __future__ import annotations

import importlib
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

from reverse_http.cli import options
from reverse_http.cli.main import app
from reverse_http.config import AgentConfig, LbConfig, ListenAddress, LogConfig, ProxyConfig
from reverse_http.devcerts import CertFiles
from reverse_http.errors import ConfigError

# The module, not reverse_http.cli.main(): the package's console-script function of the
# same name hides the module until something imports it.
cli_main = importlib.import_module("reverse_http.cli.main")

SECRET = "eyJhbGciOiJFUzI1NiJ9.SECRET-PAYLOAD.SECRET-SIGNATURE"
#: The real one; the autouse fixture replaces it with the test's home directory.
REAL_HOME_DIR = options.home_dir


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
    monkeypatch.setattr(options, "home_dir", lambda: home)
    monkeypatch.setattr(
        options,
        "CONFIG_SEARCH_PATHS",
        (
            str(tmp_path / "etc" / "config.json"),
            "~/.reverse-http.json",
            str(tmp_path / "etc" / "config.yaml"),
            "~/.reverse-http.yaml",
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
    """Exit 1 (the Go reference's status for it), exactly one line on stderr,
    containing every needle; returns the line."""
    run = invoke(args, env)
    assert run.exit_code == 1, (run.exit_code, run.stdout, run.stderr)
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
    params = {p.name: p for p in cmd.params if p.name not in ("config", "check", "help")}
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


def test_agent_server_retry_flag(captured: Captured) -> None:
    ok(["proxy"])
    ok(["proxy", "--agent-server.retry"])
    ok(["proxy"], env={"REVERSE_HTTP_AGENT_SERVER_RETRY": "true"})
    assert [c.agent_admission.retry for c in captured.configs] == [False, True, True]


def test_quic_transport_flags_reach_both_daemons(captured: Captured) -> None:
    from reverse_http.quic import TransportSettings

    ok(["proxy"])
    ok(AGENT_OK)
    assert captured.configs[0].transport == TransportSettings()
    assert captured.configs[1].transport == TransportSettings()
    ok(
        [
            "proxy",
            "--quic.max-datagram-size=1400",
            "--quic.pmtu-discovery=false",
            "--quic.congestion-control=cubic",
            "--quic.stream-receive-window=512KiB",
            "--quic.connection-receive-window=32MiB",
            "--quic.keepalive-interval=5s",
            "--quic.liveness-timeout=0s",
            "--quic.idle-timeout=1m",
            "--quic.handshake-timeout=2s",
            "--quic.udp-buffer-size=8M",
        ]
    )
    t = captured.configs[2].transport
    assert (t.max_datagram_size, t.pmtu_discovery, t.pmtu_ceiling) == (1400, False, None)
    assert t.congestion_control == "cubic"
    assert (t.stream_receive_window, t.connection_receive_window) == (512 * 1024, 32 << 20)
    assert (t.keepalive_interval, t.liveness_timeout, t.idle_timeout) == (5, 0, 60)
    assert (t.handshake_timeout, t.socket_buffer_size) == (2, 8 << 20)
    ok(AGENT_OK, env={"REVERSE_HTTP_QUIC_MAX_DATAGRAM_SIZE": "1280"})
    assert captured.configs[3].transport.max_datagram_size == 1280


def test_initial_congestion_window_flag_env_and_file(captured: Captured, tmp_path: Path) -> None:
    """The flag, its environment variable and a config-file key reach the settings the
    controllers are made from (tests/test_quic_congestion.py follows them from there)."""
    ok(["proxy"])
    ok(["proxy", "--quic.initial-congestion-window=20"])
    ok(AGENT_OK, env={"REVERSE_HTTP_QUIC_INITIAL_CONGESTION_WINDOW": "12"})
    path = write(tmp_path / "conf.yaml", {"quic": {"initial-congestion-window": "40"}})
    ok([*AGENT_OK, "--config", str(path)])
    windows = [c.transport.initial_congestion_window for c in captured.configs]
    assert windows == [32, 20, 12, 40]


def test_bad_quic_transport_flags_are_named(captured: Captured) -> None:
    fails(["proxy", "--quic.max-datagram-size=1100"], "--quic.max-datagram-size", "between 1200")
    fails([*AGENT_OK, "--quic.udp-buffer-size=lots"], "--quic.udp-buffer-size", "invalid size")
    fails(["proxy", "--quic.congestion-control=bbr9"], "--quic.congestion-control")
    for bad, why in (("1", "between 2 and 1000"), ("ten", "invalid number"), ("-3", "invalid")):
        fails(
            [*AGENT_OK, f"--quic.initial-congestion-window={bad}"],
            "--quic.initial-congestion-window",
            why,
        )
    fails(
        [*AGENT_OK, "--quic.stream-receive-window=32MiB"],
        "--quic.connection-receive-window must be at least --quic.stream-receive-window",
    )


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
    write(tmp_path / "home" / ".reverse-http.json", {"agent-server.listen-address": ":2"})
    ok(["proxy"])
    assert captured.proxy.agent_listen == ListenAddress("", 2)

    captured.configs.clear()
    write(tmp_path / "etc" / "config.yaml", {"agent-server.listen-address": ":3"})
    ok(["proxy"])  # read after ~/.reverse-http.json, so it wins
    assert captured.proxy.agent_listen == ListenAddress("", 3)

    captured.configs.clear()
    ok(["proxy", "--config", str(path)])  # an explicit file replaces the search
    assert captured.proxy.agent_listen == ListenAddress("", 1111)

    captured.configs.clear()
    ok(["proxy", "--config="])  # '' disables the search
    assert captured.proxy.agent_listen == ListenAddress("", 4242)


# ------------------------------------------- the Go reference's configuration files


def search_path(tmp_path: Path, which: str) -> Path:
    """The four search paths of the autouse fixture, in the order they are read."""
    return {
        "etc.json": tmp_path / "etc" / "config.json",
        "home.json": tmp_path / "home" / ".reverse-http.json",
        "etc.yaml": tmp_path / "etc" / "config.yaml",
        "home.yaml": tmp_path / "home" / ".reverse-http.yaml",
    }[which]


class LogRecorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def info(self, msg: str, *, extra: dict[str, Any]) -> None:
        self.lines.append(("info", msg, extra["fields"]))

    def warning(self, msg: str, *, extra: dict[str, Any]) -> None:
        self.lines.append(("warning", msg, extra["fields"]))


def test_search_merges_every_file_later_wins(
    captured: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like kong: every existing file is read, JSON before YAML, /etc before ~."""
    recorder = LogRecorder()
    monkeypatch.setattr(cli_main, "log", recorder)
    files = {
        "etc.json": {
            "agent_server.listen_address": ":1001",
            "http_proxy.listen_address": ":1011",
            "log.level": "debug",
        },
        "home.json": {
            "agent_server": {"listen_address": ":1002"},
            "store.memcached.timeout": "2s",
        },
        "etc.yaml": {"proxy": {"agent-server.listen-address": ":1003"}, "log.format": "json"},
        "home.yaml": {"proxy-agent-server.agent.dial-timeout": "4s"},
    }
    for which, data in files.items():
        write(search_path(tmp_path, which), data)

    def run() -> ProxyConfig:
        captured.configs.clear()
        captured.logs.clear()
        ok(["proxy"])
        return captured.proxy

    config = run()
    assert config.agent_listen == ListenAddress("", 1003)
    assert config.http_listen == ListenAddress("", 1011)
    assert config.store.memcached_timeout == 2.0
    assert config.agent_dial_timeout == 4.0
    assert captured.logs == [LogConfig(level="debug", format="json")]
    assert [fields["path"] for _, msg, fields in recorder.lines if msg.endswith("loaded")] == [
        str(search_path(tmp_path, which)) for which in files
    ]

    search_path(tmp_path, "etc.yaml").unlink()
    assert run().agent_listen == ListenAddress("", 1002)
    search_path(tmp_path, "home.json").unlink()
    config = run()
    assert config.agent_listen == ListenAddress("", 1001)
    assert config.store.memcached_timeout == 1.0
    assert config.agent_dial_timeout == 4.0


def test_home_is_the_password_database_entry(
    captured: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~`` as Go's os/user finds it: the passwd entry, $HOME only without one (and $USER)."""
    monkeypatch.setattr(options, "home_dir", REAL_HOME_DIR)
    pw_home = tmp_path / "pw-home"
    write(pw_home / ".reverse-http.yaml", {"proxy-agent-server.listen-address": ":2001"})
    write(tmp_path / "home" / ".reverse-http.yaml", {"proxy-agent-server.listen-address": ":2002"})
    assert os.environ["HOME"] == str(tmp_path / "home")
    asked: list[int] = []

    def getpwuid(uid: int) -> Any:
        asked.append(uid)
        return types.SimpleNamespace(pw_dir=str(pw_home))

    def no_entry(uid: int) -> Any:
        raise KeyError(uid)

    def port() -> int:
        captured.configs.clear()
        ok(["proxy"])
        return captured.proxy.agent_listen.port

    monkeypatch.setattr(options.pwd, "getpwuid", getpwuid)
    assert port() == 2001
    assert asked and set(asked) == {os.getuid()}

    monkeypatch.setattr(options.pwd, "getpwuid", no_entry)
    monkeypatch.setenv("USER", "someone")
    assert port() == 2002
    monkeypatch.delenv("USER")
    assert port() == 4242  # Go's os/user fails without $USER: no home files


GO_VALUE = "127.0.0.9:3001"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # kong's JSON resolver: "-" as "_", its camelCase, nested on the dots
        ("go.json", {"agent_server.listen_address": GO_VALUE}),
        ("go.json", {"agentServer.ListenAddress": GO_VALUE}),
        ("go.json", {"agent_server": {"listen_address": GO_VALUE}}),
        # kong-yaml: under the command, nested or prefixed, split at any "-"
        ("go.yaml", {"proxy": {"agent-server.listen-address": GO_VALUE}}),
        ("go.yaml", {"proxy-agent-server.listen-address": GO_VALUE}),
        ("go.yaml", {"proxy-agent": {"server.listen-address": GO_VALUE}}),
        ("go.yaml", {"proxy": {"agent": {"server.listen-address": GO_VALUE}}}),
        ("go.yaml", {"proxy": {"agent-server.listen": {"address": GO_VALUE}}}),
        # this implementation's own forms, and mixtures, in either file type
        ("ours.yaml", {"agent-server.listen-address": GO_VALUE}),
        ("ours.json", {"agent-server": {"listen-address": GO_VALUE}}),
        ("ours.json", {"proxy": {"agent-server": {"listen-address": GO_VALUE}}}),
        ("ours.yaml", {"proxy": {"agentServer.ListenAddress": GO_VALUE}}),
        ("ours.yaml", {"proxy_agent_server.listen_address": GO_VALUE}),
        ("ours.yaml", {"agentServer": {"ListenAddress": GO_VALUE}}),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v),
)
def test_key_forms(captured: Captured, tmp_path: Path, name: str, data: object) -> None:
    path = write(tmp_path / name, data)
    ok(["proxy", "--config", str(path)])
    assert captured.proxy.agent_listen == ListenAddress("127.0.0.9", 3001)


def test_key_forms_of_every_kind(captured: Captured, tmp_path: Path) -> None:
    """Lists, bools and the global log flags, as the Go reference's loaders spell them."""
    path = write(
        tmp_path / "agent.json",
        {
            "agentClient.ServerAddress": "proxy.example:4443",
            "agentClient.HostWhitelist": ["a.example", "b.example:80"],
            "agentClient.Tls.InsecureSkipVerify": True,
            "auth.Type": "noauth",
            "auth": {"noauth": {"agent_id": "a7"}},
            "log.Level": "warn",
        },
    )
    ok(["agent", "--config", str(path)])
    config = captured.agent
    assert (config.server_host, config.server_port) == ("proxy.example", 4443)
    assert str(config.host_whitelist) == "a.example,b.example:80"
    assert config.tls.insecure_skip_verify is True
    assert config.credentials.agent_id == "a7"
    assert captured.logs == [LogConfig(level="warn", format="text")]

    captured.configs.clear()
    captured.logs.clear()
    path = write(
        tmp_path / "agent.yaml",
        {
            "agent": {"agent-client.server-address": "proxy.example:4444"},
            "agent-auth.noauth.agent-id": "a8",
            "agent-agent-client": {"host-whitelist": ["c.example"]},
            "log.level": "error",
        },
    )
    ok(["agent", "--config", str(path)])
    config = captured.agent
    assert config.server_port == 4444
    assert config.credentials.agent_id == "a8"
    assert str(config.host_whitelist) == "c.example"
    assert captured.logs == [LogConfig(level="error", format="text")]


def test_keys_of_other_commands_are_ignored(captured: Captured, tmp_path: Path) -> None:
    write(
        search_path(tmp_path, "home.yaml"),
        {
            "proxy": {"http-proxy.listen-address": ":8"},
            "agent": {"auth.noauth.agent-id": "x1"},
            "lb-http-proxy.listen-address": ":9",
            "agent-client.server-address": "h.example:1",
            "http-connector.tls.insecure-skip-verify": True,
        },
    )
    ok(["proxy"])
    assert captured.proxy.http_listen == ListenAddress("", 8)
    captured.configs.clear()
    ok(["lb"])
    assert captured.lb.http_listen == ListenAddress("", 9)
    assert captured.lb.connector_tls.insecure_skip_verify is True
    captured.configs.clear()
    ok(["agent"])
    assert captured.agent.credentials.agent_id == "x1"
    assert captured.agent.server_host == "h.example"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"agent-server.listen-adress": ":1"},
            'unknown key "agent-server.listen-adress"'
            ' (did you mean "agent-server.listen-address"?)',
        ),
        (
            {"agentServer.listenAddress": ":1"},
            'unknown key "agentServer.listenAddress" (did you mean "agentServer.ListenAddress"?)',
        ),
        (
            {"agent_server": {"listen_adress": ":1"}},
            'unknown key "agent_server.listen_adress"'
            ' (did you mean "agent_server.listen_address"?)',
        ),
        (
            {"proxy-agent-server.listen-adress": ":1"},
            'unknown key "proxy-agent-server.listen-adress"'
            ' (did you mean "proxy-agent-server.listen-address"?)',
        ),
        (
            {"proxy": {"agent-server": {"listen-adress": ":1"}}},
            'unknown key "proxy.agent-server.listen-adress"'
            ' (did you mean "proxy.agent-server.listen-address"?)',
        ),
        (
            {"proxy": {"auth.noauth.agent-id": "x"}},
            'unknown key "proxy.auth.noauth.agent-id"'
            " (no such flag for proxy; it is a flag of agent)",
        ),
        ({"colour": "blue"}, 'unknown key "colour"'),
    ],
)
@pytest.mark.parametrize("command", ["proxy", "agent"])
def test_unknown_keys(
    captured: Captured, tmp_path: Path, data: object, message: str, command: str
) -> None:
    path = write(search_path(tmp_path, "home.yaml"), data)
    line = fails([command])
    assert line == f"reverse-http {command}: {path}: {message}"
    assert captured.configs == []


def test_every_file_is_checked(captured: Captured, tmp_path: Path) -> None:
    """An unknown key is an error even where a later file sets every flag it could mean."""
    etc_json = write(search_path(tmp_path, "etc.json"), {"agent_server.listen_adress": ":1"})
    write(search_path(tmp_path, "home.yaml"), {"agent-server.listen-address": ":2"})
    fails(["proxy"], str(etc_json), '"agent_server.listen_adress"', "did you mean")


def test_same_flag_twice_in_one_file(captured: Captured, tmp_path: Path) -> None:
    path = write(
        tmp_path / "twice.json",
        {"agent_server.listen_address": ":1", "agentServer.ListenAddress": ":2"},
    )
    line = fails(["proxy", "--config", str(path)])
    assert line == (
        f"reverse-http proxy: {path}: agent-server.listen-address is given more than once"
        ' ("agent_server.listen_address" and "agentServer.ListenAddress")'
    )


def test_null_leaves_the_flag_unset(captured: Captured, tmp_path: Path) -> None:
    write(
        search_path(tmp_path, "etc.json"),
        {"agent_server.listen_address": ":4001", "http_proxy.host_whitelist": ["a.example"]},
    )
    write(
        search_path(tmp_path, "home.yaml"),
        {
            "proxy": {
                "agent-server.listen-address": None,
                "http-proxy.host-whitelist": None,
                "shutdown-grace-period": "7s",
            }
        },
    )
    ok(["proxy"])
    assert captured.proxy.agent_listen == ListenAddress("", 4001)
    assert str(captured.proxy.host_whitelist) == "a.example"
    assert captured.proxy.shutdown_grace_period == 7.0


def test_bad_value_is_blamed_on_the_file_and_key_that_set_it(
    captured: Captured, tmp_path: Path
) -> None:
    etc_json = write(
        search_path(tmp_path, "etc.json"),
        {"agent_server": {"agent": {"dial_timeout": "abc"}}, "log.Level": "loud"},
    )
    line = fails(["--log.level=info", "proxy"])
    assert line == (
        f'reverse-http proxy: {etc_json}: agent_server.agent.dial_timeout: invalid duration "abc"'
        + EXPECTED_A_NUMBER
    )
    line = fails(["proxy"])  # the log level is checked first
    assert line.startswith(f'reverse-http proxy: {etc_json}: log.Level: "loud" is not one of')

    # A later file, the environment or a flag replaces the bad value: no error.
    home_yaml = write(
        search_path(tmp_path, "home.yaml"),
        {"proxy": {"agent-server": {"agent": {"dial-timeout": "5s"}}, "log.level": "info"}},
    )
    ok(["proxy"])
    assert captured.proxy.agent_dial_timeout == 5.0
    home_yaml.unlink()
    captured.configs.clear()
    env = {"REVERSE_HTTP_AGENT_SERVER_AGENT_DIAL_TIMEOUT": "6s", "REVERSE_HTTP_LOG_LEVEL": "info"}
    ok(["proxy"], env=env)
    assert captured.proxy.agent_dial_timeout == 6.0

    # A bad value from the environment or a flag is blamed on the flag.
    line = fails(["proxy", "--agent-server.agent.dial-timeout=xyz"], env=env)
    assert line.startswith(
        'reverse-http proxy: --agent-server.agent.dial-timeout: invalid duration "xyz": '
    )

    # Several flags in one message: the file's stands for the one that set it.
    etc_json.unlink()
    home_yaml = write(search_path(tmp_path, "home.yaml"), {"http-proxy.tls.enable": True})
    line = fails(["proxy"])
    assert line.startswith(
        f"reverse-http proxy: {home_yaml}: http-proxy.tls.enable requires --http-proxy.tls.file."
    )


def test_precedence_flag_env_files(captured: Captured, tmp_path: Path) -> None:
    name = "agent-server.listen-address"
    env = {options.env_var(name): ":5003"}
    write(search_path(tmp_path, "etc.json"), {"agent_server.listen_address": ":5001"})

    def port(args: list[str], env: dict[str, str]) -> int:
        captured.configs.clear()
        ok(["proxy", *args], env=env)
        return captured.proxy.agent_listen.port

    assert port([], {}) == 5001
    write(search_path(tmp_path, "home.yaml"), {"proxy-agent-server.listen-address": ":5002"})
    assert port([], {}) == 5002
    assert port([], env) == 5003
    assert port([f"--{name}=:5004"], env) == 5004


def test_unopenable_search_file_is_skipped(
    captured: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kong skips a search path it may not open (tests run as root, so fake EACCES)."""
    import errno

    recorder = LogRecorder()
    monkeypatch.setattr(cli_main, "log", recorder)
    etc_json = search_path(tmp_path, "etc.json")
    etc_json.parent.mkdir(parents=True)
    etc_json.write_text("{ not even JSON")
    write(search_path(tmp_path, "home.yaml"), {"proxy-agent-server.listen-address": ":6001"})
    real_open = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path) == etc_json:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    ok(["proxy"])
    assert captured.proxy.agent_listen == ListenAddress("", 6001)
    assert (
        "warning",
        "configuration file skipped",
        {"path": str(etc_json), "error": "Permission denied"},
    ) in recorder.lines


def test_kong_camel() -> None:
    assert options.kong_camel("agent-server.listen-address") == "agentServer.ListenAddress"
    assert options.kong_camel("log.level") == "log.Level"
    assert options.kong_camel("agent-client.tls.insecure-skip-verify") == (
        "agentClient.Tls.InsecureSkipVerify"
    )
    assert options.kong_camel("shutdown-grace-period") == "shutdownGracePeriod"


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
    line = fails(["proxy", "--config", str(path)])
    assert line == (
        f'reverse-http proxy: {path}: agent-server.agent.dial-timeout: invalid duration "abc"'
        + EXPECTED_A_NUMBER
    )
    path = write(tmp_path / "d.yaml", {"http-proxy.tls.enable": "perhaps"})
    line = fails(["proxy", "--config", str(path)])
    assert line == (
        f"reverse-http proxy: {path}: http-proxy.tls.enable: "
        'invalid boolean value "perhaps" (expected true or false)'
    )


EXPECTED_A_NUMBER = ": expected a number at 'abc' (e.g. 24h, 90m, 1h30m, 10s, 500ms)"


def test_duration_without_unit_says_so_and_shows_the_fix(captured: Captured) -> None:
    line = fails(["proxy", "--shutdown-grace-period=10"])
    assert line == (
        'reverse-http proxy: --shutdown-grace-period: invalid duration "10": missing unit; '
        "use e.g. 10s, 10ms or 10m (valid units: ns, us, ms, s, m, h)"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"REVERSE_HTTP_SHUTDOWN_GRACE_PERIOD": "10"},
            "environment variable REVERSE_HTTP_SHUTDOWN_GRACE_PERIOD: invalid duration "
            '"10": missing unit; use e.g. 10s',
        ),
        (
            {"REVERSE_HTTP_HTTP_PROXY_LISTEN_ADDRESS": "nowhere"},
            "environment variable REVERSE_HTTP_HTTP_PROXY_LISTEN_ADDRESS: "
            'invalid address "nowhere"',
        ),
        # the Go reference's variable, read after ours (an empty one does not count)
        (
            {"REVERSE_HTTP_LOG_LEVEL": "", "LOG_LEVEL": "loud"},
            'environment variable LOG_LEVEL: "loud" is not one of',
        ),
        # converted by typer (pydantic) before our builders see it: still our wording
        (
            {"REVERSE_HTTP_HTTP_PROXY_TLS_ENABLE": "maybe"},
            "environment variable REVERSE_HTTP_HTTP_PROXY_TLS_ENABLE: "
            'invalid boolean value "maybe" (expected true or false)',
        ),
        (
            {"REVERSE_HTTP_CONFIG": "/nonexistent/reverse-http.yaml"},
            'environment variable REVERSE_HTTP_CONFIG: cannot read "/nonexistent/',
        ),
        # a message about several flags names the variable that set the first one
        (
            {"REVERSE_HTTP_HTTP_PROXY_TLS_ENABLE": "yes"},
            "environment variable REVERSE_HTTP_HTTP_PROXY_TLS_ENABLE requires "
            "--http-proxy.tls.file.key",
        ),
    ],
)
def test_bad_value_from_the_environment_is_blamed_on_the_variable(
    captured: Captured, env: dict[str, str], expected: str
) -> None:
    line = fails(["proxy"], env=env)
    assert line.startswith(f"reverse-http proxy: {expected}"), line
    assert "Input should be" not in line and "--" + "shutdown" not in line


def test_bad_value_from_a_flag_is_blamed_on_the_flag_even_with_the_variable_set(
    captured: Captured,
) -> None:
    env = {"REVERSE_HTTP_LOG_LEVEL": "info", "REVERSE_HTTP_HTTP_PROXY_TLS_ENABLE": "maybe"}
    line = fails(["--log.level=loud", "proxy", "--http-proxy.tls.enable=true"], env=env)
    assert line.startswith('reverse-http proxy: --log.level: "loud" is not one of'), line
    line = fails(["proxy", "--http-proxy.tls.enable=maybe"], env=env)
    assert line == (
        'reverse-http proxy: --http-proxy.tls.enable: invalid boolean value "maybe" '
        "(expected true or false)"
    )


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
        assert run.exit_code == 1, run.stderr
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


def test_a_crash_exits_2_with_its_traceback(captured: Captured) -> None:
    """Not 1, the status of every user error: ``RestartPreventExitStatus=1`` must still
    restart a daemon that crashed (2 is also what a Go panic exits with)."""
    captured.raise_exc = RuntimeError("bug")
    run = invoke(["proxy"])
    assert run.exit_code == 2
    assert "Traceback" in run.stderr and "RuntimeError: bug" in run.stderr


def test_click_usage_errors_exit_1_like_the_go_reference() -> None:
    """Statuses recorded from the Go reference (kong): 1 for each of these."""
    for args in (
        [],
        ["nocmd"],
        ["proxy", "--nope"],
        ["proxy", "--agent-server.listen-address"],
        ["proxy", "--auth.type=bogus"],
        ["auth"],
        ["auth", "jwt", "token", "--nope"],
    ):
        run = invoke(args)
        assert run.exit_code == 1, (args, run.exit_code, run.stderr)
        assert "Traceback" not in run.stderr


# ------------------------------------------------------------ builders directly


def test_builders_take_partial_values() -> None:
    config = options.build_proxy_config({"agent-server.listen-address": "[::]:1"})
    assert config.agent_listen == ListenAddress("::", 1)
    assert config.http_listen == ListenAddress("", 3128)
    agent = options.build_agent_config({"auth.noauth.agent-id": "x", "auth.type": "NOAUTH"})
    assert agent.credentials.agent_id == "x"
    with pytest.raises(ConfigError, match=r"--auth\.noauth\.agent-id"):
        options.build_agent_config({})


@pytest.mark.parametrize("value", ["0", "0s", "-1s", "-5m"])
def test_go_durations_of_zero_or_less_mean_what_they_mean_in_go(value: str) -> None:
    """The Go reference reads 0 or less as "off" (the TLS refresh intervals) or "the
    client's default" (the memcached timeout, gomemcache's 500 ms): ours accepts the same
    values with the same meaning (docs/compatibility.md, Behaviour decisions)."""
    proxy = options.build_proxy_config(
        {
            "agent-server.tls.refresh": value,
            "http-proxy.tls.enable": True,
            "http-proxy.tls.file.cert": __file__,
            "http-proxy.tls.file.key": __file__,
            "http-proxy.tls.refresh": value,
            "store.memcached.timeout": value,
        }
    )
    assert proxy.agent_tls_refresh == 0.0
    assert proxy.http_tls is not None and proxy.http_tls.refresh == 0.0
    assert proxy.store.memcached_timeout == 0.5
    lb = options.build_lb_config(
        {"http-connector.tls.refresh": value, "store.memcached.timeout": value}
    )
    assert lb.store.memcached_timeout == 0.5
    agent = options.build_agent_config(
        {"auth.noauth.agent-id": "x", "agent-client.tls.refresh": value}
    )
    assert agent.credentials.agent_id == "x"


@pytest.mark.parametrize("value", ["0", "-1s"])
def test_agent_dial_timeout_of_zero_or_less_is_refused_and_says_why(value: str) -> None:
    """The one Go duration whose "off" ours refuses: no timeout on a CONNECT to an agent."""
    with pytest.raises(ConfigError) as raised:
        options.build_proxy_config({"agent-server.agent.dial-timeout": value})
    message = str(raised.value)
    assert message.startswith(f'--agent-server.agent.dial-timeout: duration "{value}" must be')
    assert "the Go reference reads 0 as no timeout" in message
    assert "indefinitely" in message


def test_positive_go_durations_are_kept() -> None:
    proxy = options.build_proxy_config(
        {"agent-server.tls.refresh": "90s", "store.memcached.timeout": "250ms"}
    )
    assert proxy.agent_tls_refresh == 90.0
    assert proxy.store.memcached_timeout == 0.25


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
    assert bad.returncode == 1, bad.stderr
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
