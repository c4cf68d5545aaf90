"""Command-line flags, their sources, and the builders of the typed configuration.

Every daemon flag is described once, in the per-command tables of :data:`COMMANDS`; the
CLI turns them into options, and the same tables give environment variable names,
defaults and the keys a configuration file may hold.

Precedence, highest first: command line, environment (``REVERSE_HTTP_<FLAG>``),
configuration files, built-in default. Click resolves exactly this order when each
option has ``envvar=`` and the files' merged values are installed as the context's
``default_map`` (see ``reverse_http.cli.main``). (kong, in the Go reference, lets a
file beat the environment; there only ``LOG_LEVEL`` and ``LOG_FORMAT`` are read from the
environment, so only those two can differ.)

Configuration files are YAML (``.yml``/``.yaml``) or JSON (``.json``). Without
``--config``, every file of :data:`CONFIG_SEARCH_PATHS` that exists is read and merged,
later files overriding earlier ones, as the Go reference does. A file may spell a key in
any form one of the Go reference's two loaders (kong's JSON resolver, kong-yaml)
resolves, or in this implementation's own flat/nested form; see "files" below. A key no
command knows is an error naming the file and the key; a key that only another command
knows is ignored, as the Go reference ignores it.

The builders take ``values``: a mapping from flag name (``"auth.type"``) to the raw
value (string, bool, or sequence of strings for list flags); missing names take the
flag's default. They validate everything and raise :class:`ConfigError` whose
message names the flag (and the file, for file-valued flags). A message about one
flag's value starts with ``--<flag>``: the CLI replaces that with the configuration
file and key when the value came from a file. Secrets (tokens) are never part of a
message.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import json
import os
import pwd
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple, cast

from ..allowlist import AllowList, AllowListError
from ..auth.tokenfile import TokenFileError, read_token_file
from ..config import (
    AgentConfig,
    AgentCredentials,
    ConnectorTls,
    LbConfig,
    ListenAddress,
    LogConfig,
    ProxyAuth,
    ProxyConfig,
    StoreConfig,
    TcpTls,
)
from ..durations import DurationError, parse_duration
from ..errors import ConfigError
from ..quic.pmtu import DEFAULT_MAX_DATAGRAM_SIZE
from ..quic.settings import (
    CONGESTION_CONTROLS,
    INITIAL_WINDOW_RANGE,
    AdmissionSettings,
    ClientTls,
    ServerTls,
    TransportSettings,
)
from ..store.route import InvalidRoute, ProxyAllowList, parse_route

__all__ = [
    "AGENT_FLAGS",
    "COMMANDS",
    "CONFIG_ENVVAR",
    "CONFIG_SEARCH_PATHS",
    "FLAGS",
    "LB_FLAGS",
    "PROXY_FLAGS",
    "ConfigFile",
    "ConfigSearch",
    "FileEntry",
    "Flag",
    "build_agent_config",
    "build_lb_config",
    "build_log_config",
    "build_proxy_config",
    "command_flag",
    "env_var",
    "expand_search_path",
    "find_config_files",
    "home_dir",
    "kong_camel",
    "load_config_file",
    "merge_config_files",
    "param_name",
]

ENV_PREFIX: Final = "REVERSE_HTTP_"
CONFIG_ENVVAR: Final = "REVERSE_HTTP_CONFIG"
#: Read when neither ``--config`` nor ``REVERSE_HTTP_CONFIG`` is given: every one that
#: exists, in this order, a later file's value for a flag overriding an earlier one's. This
#: is the Go reference's order (kong registers one resolver per existing file, the JSON
#: ones first, and the last resolver with a value wins). ``~`` is :func:`home_dir`.
CONFIG_SEARCH_PATHS: tuple[str, ...] = (
    "/etc/reverse-http/config.json",
    "~/.reverse-http.json",
    "/etc/reverse-http/config.yaml",
    "~/.reverse-http.yaml",
)

FlagKind = Literal["str", "bool", "list"]
FlagValue = str | bool | tuple[str, ...] | None

LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "error")
LOG_FORMATS: Final = ("text", "json")
AUTH_TYPES: Final = ("noauth", "jwt")
STORE_TYPES: Final = ("none", "memcached")
TOKEN_FILE_PREFIX: Final = "file:"


@dataclass(frozen=True)
class Flag:
    """One ``--name`` flag of a daemon command."""

    name: str
    help: str
    default: FlagValue = None
    kind: FlagKind = "str"
    choices: tuple[str, ...] | None = None
    #: Extra environment variables read after ``REVERSE_HTTP_<NAME>`` (Go compatibility).
    legacy_envvars: tuple[str, ...] = ()
    #: Shown in help instead of the type name.
    metavar: str | None = None

    @property
    def envvars(self) -> tuple[str, ...]:
        return (env_var(self.name), *self.legacy_envvars)


def _q(text: str) -> str:
    """Quote like Go's ``%q`` so messages read the same as the reference's."""
    return json.dumps(text, ensure_ascii=False)


def env_var(flag_name: str) -> str:
    """``agent-server.listen-address`` -> ``REVERSE_HTTP_AGENT_SERVER_LISTEN_ADDRESS``."""
    return ENV_PREFIX + flag_name.upper().replace(".", "_").replace("-", "_")


def param_name(flag_name: str) -> str:
    """The Python identifier click uses for the flag's value."""
    return flag_name.replace(".", "_").replace("-", "_")


_LOG_FLAGS: Final = (
    Flag(
        "log.level",
        "Log level.",
        "info",
        choices=LOG_LEVELS,
        legacy_envvars=("LOG_LEVEL",),
    ),
    Flag(
        "log.format",
        "Log format.",
        "text",
        choices=LOG_FORMATS,
        legacy_envvars=("LOG_FORMAT",),
    ),
)


def _duration_flag(name: str, help_text: str, default: str) -> Flag:
    return Flag(name, help_text, default, metavar="DURATION")


def _file_flag(name: str, help_text: str) -> Flag:
    return Flag(name, help_text, metavar="FILE")


def _key_password_flag(name: str, key: str) -> Flag:
    return Flag(name, f"Password of the {key}, if it is encrypted.", metavar="PASSWORD")


def _whitelist_flag(name: str) -> Flag:
    return Flag(
        name,
        "Whitelisted destinations (repeatable, comma-separated). Empty allows all.",
        (),
        kind="list",
        metavar="PATTERNS",
    )


def _http_proxy_flags(default_listen: str) -> tuple[Flag, ...]:
    return (
        Flag("http-proxy.listen-address", "HTTP proxy listen address.", default_listen),
        Flag("http-proxy.tls.enable", "Serve the HTTP proxy over TLS.", False, kind="bool"),
        _duration_flag(
            "http-proxy.tls.refresh",
            "Interval for re-reading the HTTP proxy TLS files (0 or less: only on SIGHUP).",
            "0s",
        ),
        _file_flag("http-proxy.tls.file.key", "HTTP proxy TLS key file."),
        _file_flag("http-proxy.tls.file.cert", "HTTP proxy TLS certificate file."),
        _file_flag(
            "http-proxy.tls.file.client-ca",
            "CA file: HTTP proxy clients must present a certificate it signed (mutual TLS).",
        ),
        _file_flag(
            "http-proxy.tls.file.client-crl",
            "PEM CRL file signed by the client CA; revoked client certificates are refused.",
        ),
        _key_password_flag("http-proxy.tls.key-password", "HTTP proxy TLS key file"),
        _whitelist_flag("http-proxy.host-whitelist"),
    )


_AUTH_VERIFIER_FLAGS: Final = (
    Flag("auth.type", "Authentication type.", "noauth", choices=AUTH_TYPES),
    Flag(
        "auth.jwt.public-key", "Path to the JWT public key.", "auth-key-public.pem", metavar="FILE"
    ),
    Flag("auth.jwt.audience", "JWT audience."),
)

_MEMCACHED_FLAGS: Final = (
    Flag(
        "store.memcached.address",
        "Memcached server address(es), comma-separated.",
        "localhost:11211",
    ),
    _duration_flag(
        "store.memcached.timeout",
        "Memcached dial timeout (0 or less: 500 ms, as in the Go reference).",
        "1s",
    ),
)

#: QUIC transport settings, the same on the proxy's agent server and on the agent.
_QUIC_FLAGS: Final = (
    Flag(
        "quic.max-datagram-size",
        "Largest UDP payload path MTU discovery probes for (1200-16000); connections start"
        " at 1200, which every path carries.",
        str(DEFAULT_MAX_DATAGRAM_SIZE),
        metavar="BYTES",
    ),
    Flag(
        "quic.pmtu-discovery",
        "Probe for the path MTU; off: every datagram is --quic.max-datagram-size from the"
        " first packet (only for paths known to carry it).",
        True,
        kind="bool",
    ),
    Flag(
        "quic.congestion-control",
        "Congestion controller: cubic, reno, or capped-reno (reno with its window capped"
        " at --quic.max-congestion-window).",
        TransportSettings.congestion_control,
        choices=CONGESTION_CONTROLS,
    ),
    Flag(
        "quic.max-congestion-window",
        "Window cap of capped-reno; must exceed the path's bandwidth-delay product.",
        str(TransportSettings.congestion_window_cap),
        metavar="BYTES",
    ),
    Flag(
        "quic.initial-congestion-window",
        "Packets the congestion window starts at, and restarts at after 2 s idle"
        " (quic-go's 32; RFC 9002: 10). Lower it only for paths with tiny buffers.",
        str(TransportSettings.initial_congestion_window),
        metavar="PACKETS",
    ),
    Flag(
        "quic.stream-receive-window",
        "A tunnel stream's first flow-control window (unread bytes it may buffer); it"
        " grows while the reader keeps up with a long path.",
        str(TransportSettings.stream_receive_window),
        metavar="BYTES",
    ),
    Flag(
        "quic.max-stream-receive-window",
        "How far a stream's window (and its send buffer) may grow: one tunnel moves at"
        " most this per round trip.",
        str(TransportSettings.stream_receive_window_max),
        metavar="BYTES",
    ),
    Flag(
        "quic.connection-receive-window",
        "Unread bytes one connection may buffer across its streams.",
        str(TransportSettings.connection_receive_window),
        metavar="BYTES",
    ),
    _duration_flag(
        "quic.keepalive-interval",
        "PING after this long without a packet from the peer (keeps NAT bindings alive).",
        "10s",
    ),
    _duration_flag(
        "quic.liveness-timeout",
        "Declare the peer dead after this long without any packet from it (0: never;"
        " the idle timeout still applies).",
        "30s",
    ),
    _duration_flag(
        "quic.idle-timeout", "Idle timeout offered to the peer in the handshake.", "30s"
    ),
    _duration_flag(
        "quic.handshake-timeout",
        "Give a handshake up after this long without a packet from the peer.",
        "5s",
    ),
    Flag(
        "quic.udp-buffer-size",
        "Kernel receive and send buffer of each UDP socket.",
        str(TransportSettings.socket_buffer_size),
        metavar="BYTES",
    ),
)

_SHUTDOWN_FLAG: Final = _duration_flag(
    "shutdown-grace-period", "Time running sessions may finish after SIGTERM.", "30s"
)

_PROXY_ONLY: Final = (
    Flag("agent-server.listen-address", "Agent server listen address (UDP).", ":4242"),
    _duration_flag(
        "agent-server.tls.refresh",
        "Interval for re-reading the agent server TLS files (0 or less: only on SIGHUP).",
        "0s",
    ),
    _file_flag(
        "agent-server.tls.file.key",
        "Agent server TLS key file; without key and cert, development certificates are generated.",
    ),
    _file_flag("agent-server.tls.file.cert", "Agent server TLS certificate file."),
    _file_flag(
        "agent-server.tls.file.client-ca",
        "CA file for verifying agent client certificates (mutual TLS).",
    ),
    _file_flag(
        "agent-server.tls.file.client-crl",
        "PEM CRL file signed by the client CA; revoked agent certificates are refused.",
    ),
    _duration_flag("agent-server.agent.dial-timeout", "Agent dial timeout.", "10s"),
    *_QUIC_FLAGS,
    Flag(
        "agent-server.retry",
        "Validate every agent's address with a QUIC Retry (one more round trip per"
        " connect); without it, Retry starts only under load.",
        False,
        kind="bool",
    ),
    *_http_proxy_flags(":3128"),
    *_AUTH_VERIFIER_FLAGS,
    Flag("store.type", "Agent access store.", "none", choices=STORE_TYPES),
    Flag("store.http-proxy-address", "Host and port for HTTP proxy access."),
    *_MEMCACHED_FLAGS,
    _duration_flag(
        "store.readiness-grace",
        "How long the route store may fail before /readyz answers 503 (0: at once); "
        "meanwhile the proxy serves its own agents.",
        "30s",
    ),
    _SHUTDOWN_FLAG,
)

_AGENT_ONLY: Final = (
    Flag("agent-client.server-address", "Address of the agent server.", "localhost:4242"),
    _whitelist_flag("agent-client.host-whitelist"),
    _duration_flag(
        "agent-client.tls.refresh",
        "Accepted for compatibility: TLS files are read at every connection attempt.",
        "0s",
    ),
    Flag(
        "agent-client.tls.insecure-skip-verify",
        "Skip verification of the server certificate.",
        False,
        kind="bool",
    ),
    _file_flag(
        "agent-client.tls.file.root-ca",
        "CA file for verifying the server; default: system roots.",
    ),
    _file_flag("agent-client.tls.file.cert", "Client certificate file (mutual TLS)."),
    _file_flag("agent-client.tls.file.key", "Client key file (mutual TLS)."),
    Flag("auth.type", "Authentication type.", "noauth", choices=AUTH_TYPES),
    Flag("auth.noauth.agent-id", "Agent ID (noauth)."),
    Flag("auth.jwt.token", "JWT token or 'file:<filename>'.", metavar="SOURCE"),
    *_QUIC_FLAGS,
)

_LB_ONLY: Final = (
    *_http_proxy_flags(":3129"),
    Flag(
        "http-connector.tls.enable",
        "Use TLS towards the proxies' HTTP listeners.",
        False,
        kind="bool",
    ),
    _duration_flag(
        "http-connector.tls.refresh",
        "Accepted for compatibility: TLS files are read at every connection attempt.",
        "0s",
    ),
    Flag(
        "http-connector.tls.insecure-skip-verify",
        "Skip verification of the proxies' certificates.",
        False,
        kind="bool",
    ),
    _file_flag(
        "http-connector.tls.file.root-ca",
        "CA file for verifying the proxies (the system store only with use-system-pool).",
    ),
    Flag(
        "http-connector.tls.use-system-pool",
        "Also trust the system CA store for the proxies' certificates.",
        False,
        kind="bool",
    ),
    Flag(
        "http-connector.tls.server-name",
        "Name the proxies' certificates must carry; default: the host of the route.",
        metavar="NAME",
    ),
    Flag(
        "http-connector.allowed-proxies",
        "IPs/CIDRs the LB may dial as proxies (repeatable, comma-separated), besides "
        "loopback and private ranges; 'no-defaults' drops those.",
        (),
        kind="list",
        metavar="NETWORKS",
    ),
    _file_flag("http-connector.tls.file.cert", "Client certificate file (mutual TLS)."),
    _file_flag("http-connector.tls.file.key", "Client key file (mutual TLS)."),
    _key_password_flag("http-connector.tls.key-password", "client key file"),
    *_AUTH_VERIFIER_FLAGS,
    Flag("store.type", "Agent access store.", "memcached", choices=("memcached",)),
    *_MEMCACHED_FLAGS,
    _duration_flag(
        "store.readiness-grace",
        "How long the route store may fail before /readyz answers 503 (0: at once).",
        "5s",
    ),
    _SHUTDOWN_FLAG,
)

#: Flags of each daemon command, in help order.
_METRICS_FLAG: Final = Flag(
    "metrics.listen-address",
    "Serve /metrics (Prometheus), /healthz and /readyz here; empty: off.",
    "",
)

PROXY_FLAGS: Final[tuple[Flag, ...]] = (*_PROXY_ONLY, _METRICS_FLAG, *_LOG_FLAGS)
AGENT_FLAGS: Final[tuple[Flag, ...]] = (*_AGENT_ONLY, _METRICS_FLAG, *_LOG_FLAGS)
LB_FLAGS: Final[tuple[Flag, ...]] = (*_LB_ONLY, _METRICS_FLAG, *_LOG_FLAGS)
COMMANDS: Final[Mapping[str, tuple[Flag, ...]]] = {
    "proxy": PROXY_FLAGS,
    "agent": AGENT_FLAGS,
    "lb": LB_FLAGS,
}
_BY_COMMAND: Final[Mapping[str, Mapping[str, Flag]]] = {
    command: {f.name: f for f in flags} for command, flags in COMMANDS.items()
}
#: Every flag name some command knows. A name shared by commands has the same kind
#: everywhere (checked below); defaults and choices may differ (``store.type``).
FLAGS: Final[Mapping[str, Flag]] = {
    f.name: f for flags in reversed(list(COMMANDS.values())) for f in flags
}
assert all(
    FLAGS[f.name].kind == f.kind and FLAGS[f.name].envvars == f.envvars
    for flags in COMMANDS.values()
    for f in flags
)


def command_flag(command: str, name: str) -> Flag:
    """The definition of ``--name`` in ``command``; KeyError if the command lacks it."""
    return _BY_COMMAND[command][name]


# --------------------------------------------------------------------------- files
#
# The keys a file may use for flag ``N`` of command ``C``: the union of what the Go
# reference's two loaders resolve (kong v0.9 ``kong.JSON`` for the ``.json`` files,
# kong-yaml v0.2 for the ``.yaml`` ones) and this implementation's earlier forms, in
# either file type. Keys are case-sensitive, as in both loaders.
#
# * ``N`` itself, flat (``agent-server.listen-address``), with ``_`` for any ``-``
#   (kong.JSON: ``agent_server.listen_address``), or in kong's camelCase
#   (:func:`kong_camel`: ``agentServer.ListenAddress``, ``log.Level``);
# * nested on the dots (kong.JSON: ``agent_server: {listen_address: ...}``);
# * for ``C`` only: in a top-level ``C:`` section or prefixed with ``C-`` (kong-yaml:
#   ``proxy: {agent-server.listen-address: ...}``, ``proxy-agent-server.listen-address``);
#   there, nesting may also split at a ``-`` (kong-yaml: ``proxy-agent: {server.listen-address:
#   ...}``).
#
# A key that spells a flag of another command only is ignored for this one (the Go
# reference ignores every key it does not resolve); a key no command has is an error.
# A null value leaves the flag unset, as in kong.


def home_dir() -> Path | None:
    """The directory ``~`` stands for, found the way Go's ``os/user.Current`` finds it.

    That is the password database entry of the real user id, whatever ``$HOME`` says;
    without an entry, ``$HOME``, but only if ``$USER`` is set as well. None (no home):
    the ``~/`` search paths are skipped.
    """
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        env_home, user = os.environ.get("HOME", ""), os.environ.get("USER", "")
        home = env_home if user else ""
    return Path(home) if home else None


def expand_search_path(path: str) -> Path | None:
    """A search path with ``~/`` under :func:`home_dir`; None if there is no home."""
    if not path.startswith("~/"):
        return Path(path)
    home = home_dir()
    return None if home is None else home / path[2:]


class ConfigSearch(NamedTuple):
    """The configuration files to read, in order."""

    files: tuple[Path, ...]
    #: Search paths that exist but cannot be opened, with the reason; skipped as kong does.
    skipped: tuple[tuple[Path, str], ...] = ()


def find_config_files(explicit: str | None) -> ConfigSearch:
    """``explicit`` alone if given (``""``: no file), else every search path that exists."""
    if explicit is not None:
        return ConfigSearch((Path(explicit),) if explicit else ())
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for candidate in CONFIG_SEARCH_PATHS:
        path = expand_search_path(candidate)
        if path is None:
            continue
        try:  # what kong does: open it; missing or forbidden means "not there"
            os.close(os.open(path, os.O_RDONLY))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            skipped.append((path, exc.strerror or "permission denied"))
            continue
        except OSError:
            pass  # load_config_file reports it, naming the file
        found.append(path)
    return ConfigSearch(tuple(found), tuple(skipped))


@dataclass(frozen=True)
class FileEntry:
    """One flag's value from a configuration file, and the key that set it."""

    value: object
    path: Path
    #: As written in the file, nested keys joined with ``.``.
    key: str

    @property
    def label(self) -> str:
        """How messages name the value: ``<file>: <key>``."""
        return f"{self.path}: {self.key}"


@dataclass(frozen=True)
class ConfigFile:
    """A parsed configuration file: keys for every command, and per-command keys."""

    path: Path
    #: By flag name; they apply to every command that has the flag.
    common: Mapping[str, FileEntry]
    #: By command, then flag name: its section and its prefixed keys.
    sections: Mapping[str, Mapping[str, FileEntry]]

    def entries_for(self, command: str) -> dict[str, FileEntry]:
        """``command``'s values, by flag name; its own keys beat the common ones."""
        known = _BY_COMMAND.get(command, {})
        merged = {k: e for k, e in self.common.items() if k in known}
        merged.update(self.sections.get(command, {}))
        return merged


def merge_config_files(files: Iterable[ConfigFile], command: str) -> dict[str, FileEntry]:
    """``command``'s values from ``files`` in order: per flag, the last file setting it wins."""
    merged: dict[str, FileEntry] = {}
    for config_file in files:
        merged.update(config_file.entries_for(command))
    return merged


def load_config_file(path: Path) -> ConfigFile:
    """Read, parse and validate a configuration file (keys and value shapes)."""
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(
            f"--config: {_q(str(path))}: unsupported file type, use .yaml, .yml or .json"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--config: cannot read {_q(str(path))}: {reason}") from None
    data: object
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
    else:
        import yaml  # only needed when a YAML file is used

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of flag names to values")

    common: dict[str, FileEntry] = {}
    sections: dict[str, dict[str, FileEntry]] = {}
    seen: dict[tuple[str | None, str], str] = {}
    for keys, value in _leaves(data, (), path):
        shown = ".".join(keys)
        scope, name = _resolve_key(keys, path)
        other = seen.get((scope, name))
        if other is not None:
            raise ConfigError(
                f"{path}: {name} is given more than once ({_q(other)} and {_q(shown)})"
            )
        seen[scope, name] = shown
        shaped = _file_value(FLAGS[name], value, shown, path)
        if shaped is not None:
            target = common if scope is None else sections.setdefault(scope, {})
            target[name] = FileEntry(shaped, path, shown)
    return ConfigFile(path=path, common=common, sections=sections)


def kong_camel(name: str) -> str:
    """kong's camelCase of a flag name, the JSON resolver's second spelling.

    Every word after a ``-`` or ``.`` capitalised, the ``-`` dropped, the first letter
    lower case: ``agent-server.listen-address`` -> ``agentServer.ListenAddress``.
    """
    titled = re.sub(r"(?:^|(?<=[^0-9A-Za-z_]))[a-z]", lambda m: m.group().upper(), name)
    camel = titled.replace("-", "")
    return camel[:1].lower() + camel[1:]


def _leaves(
    node: Mapping[object, object], prefix: tuple[str, ...], path: Path
) -> Iterator[tuple[tuple[str, ...], object]]:
    """``(keys, value)`` for every value that is not a mapping, in document order."""
    for raw_key, value in node.items():
        if not isinstance(raw_key, str) or not raw_key:
            raise ConfigError(f"{path}: invalid key {_q('.'.join((*prefix, str(raw_key))))}")
        keys = (*prefix, raw_key)
        if isinstance(value, dict):
            yield from _leaves(value, keys, path)  # an empty mapping sets nothing
        else:
            yield keys, value


def _spelled(flat: str, flags: Mapping[str, Flag]) -> str | None:
    """The name of the flag in ``flags`` that ``flat`` spells, if any."""
    kebab = flat.replace("_", "-")
    if kebab in flags:
        return kebab
    name = _FROM_CAMEL.get(flat)
    return name if name is not None and name in flags else None


def _command_key(keys: Sequence[str], flags: Mapping[str, Flag]) -> str | None:
    """The flag in ``flags`` that nested ``keys`` spell, joined at ``.`` or ``-``."""
    if not keys or len(keys) > _MAX_WORDS:
        return None
    for seps in itertools.product(".-", repeat=len(keys) - 1):
        flat = keys[0] + "".join(sep + key for sep, key in zip(seps, keys[1:], strict=True))
        name = _spelled(flat, flags)
        if name is not None:
            return name
    return None


def _resolve_key(keys: tuple[str, ...], path: Path) -> tuple[str | None, str]:
    """``(command or None for all, flag name)`` of a key; ConfigError if nothing has it."""
    head = keys[0]
    for command, flags in _BY_COMMAND.items():
        if head == command:  # a section: every key in it must be one of the command's
            name = _command_key(keys[1:], flags)
            if name is None:
                raise ConfigError(
                    f"{path}: unknown key {_q('.'.join(keys))}{_section_hint(command, keys)}"
                )
            return command, name
        cut = len(command) + 1
        if len(head) > cut and head.startswith(command) and head[cut - 1] in "-_":
            name = _command_key((head[cut:], *keys[1:]), flags)
            if name is not None:
                return command, name
    shown = ".".join(keys)
    name = _spelled(shown, FLAGS)
    if name is None:
        raise ConfigError(f"{path}: unknown key {_q(shown)}{_did_you_mean(shown, _ALL_KEYS)}")
    return None, name


def _spelled_like(text: str, name: str) -> str:
    """``name`` in the style of ``text``: camelCase, snake_case or as is."""
    if any(c.isupper() for c in text):
        return kong_camel(name)
    if "_" in text and "-" not in text:
        return name.replace("-", "_")
    return name


def _did_you_mean(text: str, names: Iterable[str]) -> str:
    """`` (did you mean "..."?)`` for the name in ``names`` closest to ``text``, or ``""``."""
    plain = text.replace("_", "-").lower()
    by_plain: dict[str, str] = {}
    for name in names:
        by_plain.setdefault(name.lower(), name)
        by_plain.setdefault(kong_camel(name).lower(), name)
    match = difflib.get_close_matches(plain, list(by_plain), n=1, cutoff=0.75)
    if not match:
        return ""
    return f" (did you mean {_q(_spelled_like(text, by_plain[match[0]]))}?)"


def _section_hint(command: str, keys: tuple[str, ...]) -> str:
    if len(keys) == 1:
        return f" (the {command} section must be a mapping of its flags to values)"
    others = [c for c, flags in _BY_COMMAND.items() if _command_key(keys[1:], flags)]
    if others:
        return f" (no such flag for {command}; it is a flag of {' and '.join(others)})"
    rest = ".".join(keys[1:])
    suggestion = _did_you_mean(rest, _BY_COMMAND[command])
    if suggestion:
        return suggestion.replace('mean "', f'mean "{keys[0]}.', 1)
    return f" (no such flag for {command})"


#: camelCase spelling -> flag name.
_FROM_CAMEL: Final[Mapping[str, str]] = {kong_camel(name): name for name in FLAGS}
#: No key nests deeper than a flag name (with its command) has words.
_MAX_WORDS: Final = 1 + max(len(re.split(r"[.-]", name)) for name in FLAGS)
#: What a key outside a section may be, for suggestions: flag names, plain or prefixed.
_ALL_KEYS: Final[tuple[str, ...]] = (
    *FLAGS,
    *(f"{command}-{name}" for command, flags in _BY_COMMAND.items() for name in flags),
)


def _file_value(flag: Flag, value: object, shown: str, path: Path) -> object:
    """Shape a file value the way click expects it for ``flag``; None: null, not set."""
    if value is None:
        return None
    if flag.kind == "list":
        items = value if isinstance(value, list) else [value]
        out: list[str] = []
        for item in items:
            if isinstance(item, (dict, list)) or item is None:
                raise ConfigError(f"{path}: {shown}: expected a string or a list of strings")
            out.append(_scalar_text(item))
        return tuple(out)
    if flag.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(
            f"{path}: {shown}: invalid boolean value {_q(_scalar_text(value))}"
            " (expected true or false)"
        )
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{path}: {shown}: expected a single value")
    return _scalar_text(value)


_SIZE: Final = re.compile(r"(\d{1,15})\s*((?:[kmg](?:i?b)?)|b)?", re.IGNORECASE)
#: ``--*.tls.refresh`` of 0 or less: no periodic re-read (SIGHUP still reloads), as in Go.
NO_REFRESH: Final = 0.0
#: ``--store.memcached.timeout`` of 0 or less: the Go reference then uses its memcached
#: client's default timeout (gomemcache's 500 ms), and so does ours.
GO_MEMCACHED_DEFAULT_TIMEOUT: Final = 0.5
#: Why ``--agent-server.agent.dial-timeout`` of 0 (no timeout in the Go reference) is refused.
_UNBOUNDED_DIAL: Final = (
    " (the Go reference reads 0 as no timeout; ours refuses it: a CONNECT to an agent"
    " that never answers would hold the client and a tunnel stream indefinitely)"
)
_SIZE_UNITS: Final = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

_BOOL_WORDS: Final = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ------------------------------------------------------------------------ builders


def build_log_config(values: Mapping[str, object]) -> LogConfig:
    """``--log.level`` / ``--log.format`` (any daemon command's table has them)."""
    v = _Values(values, "proxy")
    return LogConfig(
        level=cast('Literal["trace", "debug", "info", "warn", "error"]', v.choice("log.level")),
        format=cast('Literal["text", "json"]', v.choice("log.format")),
    )


def build_proxy_config(values: Mapping[str, object]) -> ProxyConfig:
    """Validate the proxy's flag values and build its :class:`ProxyConfig`."""
    v = _Values(values, "proxy")
    return ProxyConfig(
        agent_listen=v.listen_address("agent-server.listen-address"),
        agent_tls=_server_tls(v),
        agent_tls_refresh=v.duration("agent-server.tls.refresh", nonpositive=NO_REFRESH),
        agent_dial_timeout=v.duration(
            "agent-server.agent.dial-timeout", positive=True, why=_UNBOUNDED_DIAL
        ),
        agent_admission=AdmissionSettings(retry=v.boolean("agent-server.retry")),
        transport=_transport(v),
        http_listen=v.listen_address("http-proxy.listen-address"),
        http_tls=_http_tls(v),
        host_whitelist=v.allow_list("http-proxy.host-whitelist"),
        auth=_proxy_auth(v),
        store=_store(v),
        shutdown_grace_period=v.duration("shutdown-grace-period"),
        metrics_listen=_metrics_listen(v),
    )


def build_agent_config(values: Mapping[str, object]) -> AgentConfig:
    """Validate the agent's flag values and build its :class:`AgentConfig`."""
    v = _Values(values, "agent")
    host, port = v.server_address("agent-client.server-address")
    v.duration("agent-client.tls.refresh", nonpositive=NO_REFRESH)  # validated only
    cert, key = _key_pair(v, "agent-client.tls.file.cert", "agent-client.tls.file.key")
    tls = ClientTls(
        root_ca_file=v.optional_file("agent-client.tls.file.root-ca"),
        cert_file=cert,
        key_file=key,
        insecure_skip_verify=v.boolean("agent-client.tls.insecure-skip-verify"),
    )
    if v.choice("auth.type") == "jwt":
        token, token_file = _token(v, "auth.jwt.token")
        credentials = AgentCredentials(type="jwt", token=token, token_file=token_file)
    else:
        agent_id = v.string("auth.noauth.agent-id")
        if not agent_id:
            raise ConfigError("--auth.noauth.agent-id is required with --auth.type noauth")
        credentials = AgentCredentials(type="noauth", agent_id=agent_id)
    return AgentConfig(
        credentials=credentials,
        server_host=host,
        server_port=port,
        tls=tls,
        host_whitelist=v.allow_list("agent-client.host-whitelist"),
        metrics_listen=_metrics_listen(v),
        transport=_transport(v),
    )


def _transport(v: _Values) -> TransportSettings:
    """``--quic.*``: the transport settings; a bad combination names the flags."""
    liveness = v.duration("quic.liveness-timeout")
    stream_window = v.size("quic.stream-receive-window", 16384, 2**30)
    stream_max = v.size("quic.max-stream-receive-window", 16384, 2**30)
    connection_window = v.size("quic.connection-receive-window", 16384, 2**31)
    if connection_window < stream_window:
        raise ConfigError(
            "--quic.connection-receive-window must be at least --quic.stream-receive-window"
        )
    if stream_max < stream_window:
        raise ConfigError(
            "--quic.max-stream-receive-window must be at least --quic.stream-receive-window"
        )
    try:
        return TransportSettings(
            max_datagram_size=v.size("quic.max-datagram-size", 1200, 16000),
            pmtu_discovery=v.boolean("quic.pmtu-discovery"),
            congestion_control=v.choice("quic.congestion-control"),
            congestion_window_cap=v.size("quic.max-congestion-window", 16 * 1452, 2**30),
            initial_congestion_window=v.count(
                "quic.initial-congestion-window", *INITIAL_WINDOW_RANGE
            ),
            stream_receive_window=stream_window,
            stream_receive_window_max=stream_max,
            connection_receive_window=connection_window,
            # the send buffers follow the receive windows the operator chose
            stream_send_buffer=max(stream_window, TransportSettings.stream_send_buffer),
            stream_send_buffer_max=stream_max,
            connection_send_buffer=connection_window,
            keepalive_interval=v.duration("quic.keepalive-interval", positive=True),
            liveness_timeout=liveness,
            idle_timeout=v.duration("quic.idle-timeout", positive=True),
            handshake_timeout=v.duration("quic.handshake-timeout", positive=True),
            socket_buffer_size=v.size("quic.udp-buffer-size", 65536, 2**30),
        )
    except ValueError as exc:
        raise ConfigError(f"--quic.*: {exc}") from None


def build_lb_config(values: Mapping[str, object]) -> LbConfig:
    """Validate the LB server's flag values and build its :class:`LbConfig`."""
    v = _Values(values, "lb")
    v.duration("http-connector.tls.refresh", nonpositive=NO_REFRESH)  # validated only
    cert, key = _key_pair(v, "http-connector.tls.file.cert", "http-connector.tls.file.key")
    connector_tls = ConnectorTls(
        enable=v.boolean("http-connector.tls.enable"),
        insecure_skip_verify=v.boolean("http-connector.tls.insecure-skip-verify"),
        root_ca_file=v.optional_file("http-connector.tls.file.root-ca"),
        use_system_pool=v.boolean("http-connector.tls.use-system-pool"),
        server_name=_server_name(v, "http-connector.tls.server-name"),
        cert_file=cert,
        key_file=key,
        key_password=v.secret("http-connector.tls.key-password"),
    )
    _check_connector_verification(connector_tls)
    return LbConfig(
        http_listen=v.listen_address("http-proxy.listen-address"),
        http_tls=_http_tls(v),
        host_whitelist=v.allow_list("http-proxy.host-whitelist"),
        auth=_proxy_auth(v),
        store=_store(v),
        connector_tls=connector_tls,
        allowed_proxies=_allowed_proxies(v, "http-connector.allowed-proxies"),
        shutdown_grace_period=v.duration("shutdown-grace-period"),
        metrics_listen=_metrics_listen(v),
    )


# ------------------------------------------------------------------------- helpers


class _Values:
    """Typed, validated access to one command's raw flag values; errors name the flag."""

    def __init__(self, values: Mapping[str, object], command: str) -> None:
        self._values = values
        self._command = command

    def knows(self, name: str) -> bool:
        return name in _BY_COMMAND[self._command]

    def raw(self, name: str) -> object:
        if name in self._values:
            return self._values[name]
        return command_flag(self._command, name).default

    def string(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"--{name}: expected a string")
        return value.strip() or None

    def secret(self, name: str) -> str | None:
        """A password: taken as given (no stripping); empty means none."""
        value = self.raw(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(f"--{name}: expected a string")
        return value

    def boolean(self, name: str) -> bool:
        value = self.raw(name)
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"--{name}: expected true or false")

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
            return tuple(cast(Sequence[str], value))
        raise ConfigError(f"--{name}: expected a list of strings")

    def choice(self, name: str) -> str:
        value = self.string(name)
        value = None if value is None else value.lower()
        choices = command_flag(self._command, name).choices or ()
        if value not in choices:
            raise ConfigError(f"--{name}: {_q(value or '')} is not one of {', '.join(choices)}")
        return value

    def size(self, name: str, low: int, high: int) -> int:
        """Bytes: a number, optionally with a binary unit (512KiB, 16MiB; K, M, G alike)."""
        text = (self.string(name) or "").strip()
        match = _SIZE.fullmatch(text)
        if match is None:
            raise ConfigError(
                f"--{name}: invalid size {_q(text)}: use bytes, e.g. 1452, 512KiB or 16MiB"
            )
        number, unit = match.groups()
        value = int(number) * _SIZE_UNITS[unit.lower()[:1] if unit else ""]
        if not low <= value <= high:
            raise ConfigError(f"--{name}: {_q(text)} must be between {low} and {high} bytes")
        return value

    def count(self, name: str, low: int, high: int) -> int:
        """A whole number from ``low`` to ``high`` (packets, say)."""
        text = (self.string(name) or "").strip()
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise ConfigError(f"--{name}: invalid number {_q(text)}")
        if not low <= int(text) <= high:
            raise ConfigError(f"--{name}: {_q(text)} must be between {low} and {high}")
        return int(text)

    def duration(
        self,
        name: str,
        *,
        positive: bool = False,
        nonpositive: float | None = None,
        why: str = "",
    ) -> float:
        """A duration flag in seconds. ``nonpositive``: what 0 or less means, for the
        flags of the Go reference that read it as "off" or "the default" (accepted
        then, not refused); ``why`` is appended to the refusal of a non-positive value."""
        text = self.string(name) or ""
        try:
            seconds = parse_duration(text)
        except DurationError as exc:
            raise ConfigError(f"--{name}: invalid duration {_q(text)}: {exc.reason}") from None
        if nonpositive is not None and seconds <= 0:
            return nonpositive
        if seconds < 0 or (positive and seconds == 0):
            need = "positive" if positive else "zero or positive"
            raise ConfigError(f"--{name}: duration {_q(text)} must be {need}{why}")
        return seconds

    def listen_address(self, name: str) -> ListenAddress:
        value = self.string(name)
        if value is None:
            raise ConfigError(f"--{name}: an address is required")
        host, port = _split_host_port(name, value, allow_zero=True)
        return ListenAddress(host, port)

    def server_address(self, name: str) -> tuple[str, int]:
        value = self.string(name)
        if value is None:
            raise ConfigError(f"--{name}: an address is required")
        host, port = _split_host_port(name, value, allow_zero=False)
        if not host:
            raise ConfigError(f"--{name}: a host is required in {_q(value)}")
        return host, port

    def allow_list(self, name: str) -> AllowList:
        try:
            return AllowList.parse(self.strings(name))
        except AllowListError as exc:
            raise ConfigError(f"--{name}: {exc}") from None

    def file(self, name: str) -> Path:
        return _readable_file(name, self.string(name))

    def optional_file(self, name: str) -> Path | None:
        value = self.string(name)
        return None if value is None else _readable_file(name, value)


def _port(text: str, name: str, value: str, *, allow_zero: bool) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ConfigError(f"--{name}: invalid port in {_q(value)}")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(f"--{name}: port {port} out of range {low}-65535 in {_q(value)}")
    return port


def _split_host_port(name: str, value: str, *, allow_zero: bool) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``[v6]:port`` -> ``(host, port)`` (host unbracketed)."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ConfigError(f"--{name}: invalid address {_q(value)}, expected [host]:port")
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"--{name}: invalid IPv6 address in {_q(value)}") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ConfigError(f"--{name}: invalid address {_q(value)}, expected host:port")
        if ":" in host:
            raise ConfigError(
                f"--{name}: invalid address {_q(value)}, IPv6 addresses must be in brackets"
            )
    if any(c.isspace() or c in "/@?#[]" for c in host):
        raise ConfigError(f"--{name}: invalid host in {_q(value)}")
    return host, _port(port_text, name, value, allow_zero=allow_zero)


def _readable_file(name: str, value: str | None) -> Path:
    if not value:
        raise ConfigError(f"--{name}: a file name is required")
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"--{name}: file {_q(value)} does not exist")
    if not path.is_file():
        raise ConfigError(f"--{name}: {_q(value)} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"--{name}: file {_q(value)} is not readable")
    return path


def _key_pair(v: _Values, cert_flag: str, key_flag: str) -> tuple[Path | None, Path | None]:
    """An optional certificate and its key: both or neither."""
    cert = v.optional_file(cert_flag)
    key = v.optional_file(key_flag)
    if (cert is None) != (key is None):
        given, other = (cert_flag, key_flag) if cert is not None else (key_flag, cert_flag)
        raise ConfigError(f"--{given} requires --{other}")
    return cert, key


def _server_tls(v: _Values) -> ServerTls | None:
    key = v.string("agent-server.tls.file.key")
    cert = v.string("agent-server.tls.file.cert")
    client_ca = v.string("agent-server.tls.file.client-ca")
    if client_ca is None and v.string("agent-server.tls.file.client-crl") is not None:
        raise ConfigError(
            "--agent-server.tls.file.client-crl requires --agent-server.tls.file.client-ca"
        )
    if key is None and cert is None:
        if client_ca is not None:
            raise ConfigError(
                "--agent-server.tls.file.client-ca requires --agent-server.tls.file.cert "
                "and --agent-server.tls.file.key"
            )
        return None
    if key is None or cert is None:
        given, other = ("cert", "key") if cert is not None else ("key", "cert")
        raise ConfigError(
            f"--agent-server.tls.file.{given} requires --agent-server.tls.file.{other}"
        )
    return ServerTls(
        cert_file=_readable_file("agent-server.tls.file.cert", cert),
        key_file=_readable_file("agent-server.tls.file.key", key),
        client_ca_file=v.optional_file("agent-server.tls.file.client-ca"),
        client_crl_file=v.optional_file("agent-server.tls.file.client-crl"),
    )


def _http_tls(v: _Values) -> TcpTls | None:
    if not v.boolean("http-proxy.tls.enable"):
        return None
    refresh = v.duration("http-proxy.tls.refresh", nonpositive=NO_REFRESH)
    missing = [
        f"--http-proxy.tls.file.{part}"
        for part in ("key", "cert")
        if v.string(f"http-proxy.tls.file.{part}") is None
    ]
    if missing:
        raise ConfigError(f"--http-proxy.tls.enable requires {' and '.join(missing)}")
    client_ca = v.optional_file("http-proxy.tls.file.client-ca")
    client_crl = v.optional_file("http-proxy.tls.file.client-crl")
    if client_crl is not None and client_ca is None:
        raise ConfigError(
            "--http-proxy.tls.file.client-crl requires --http-proxy.tls.file.client-ca"
        )
    return TcpTls(
        cert_file=v.file("http-proxy.tls.file.cert"),
        key_file=v.file("http-proxy.tls.file.key"),
        refresh=refresh,
        key_password=v.secret("http-proxy.tls.key-password"),
        client_ca_file=client_ca,
        client_crl_file=client_crl,
    )


def _metrics_listen(v: _Values) -> ListenAddress | None:
    if not v.string("metrics.listen-address"):
        return None
    return v.listen_address("metrics.listen-address")


def _proxy_auth(v: _Values) -> ProxyAuth:
    if v.choice("auth.type") == "jwt":
        return ProxyAuth(
            type="jwt",
            jwt_public_key=v.file("auth.jwt.public-key"),
            jwt_audience=v.string("auth.jwt.audience"),
        )
    return ProxyAuth(type="noauth")


def _store(v: _Values) -> StoreConfig:
    store_type = v.choice("store.type")
    raw_addresses = v.string("store.memcached.address") or ""
    addresses = tuple(a.strip() for a in raw_addresses.split(",") if a.strip())
    timeout = v.duration("store.memcached.timeout", nonpositive=GO_MEMCACHED_DEFAULT_TIMEOUT)
    proxy_address = (
        v.string("store.http-proxy-address") if v.knows("store.http-proxy-address") else None
    )
    if store_type == "memcached":
        if not addresses:
            raise ConfigError("--store.memcached.address is required with --store.type memcached")
        for address in addresses:
            _split_host_port("store.memcached.address", address, allow_zero=False)
        if proxy_address is not None:
            _split_host_port("store.http-proxy-address", proxy_address, allow_zero=False)
    return StoreConfig(
        type="memcached" if store_type == "memcached" else "none",
        memcached_addresses=addresses or StoreConfig().memcached_addresses,
        memcached_timeout=timeout,
        http_proxy_address=proxy_address,
        readiness_grace=v.duration("store.readiness-grace"),
    )


def _allowed_proxies(v: _Values, name: str) -> ProxyAllowList:
    try:
        return ProxyAllowList.parse(v.strings(name))
    except ValueError as exc:
        raise ConfigError(f"--{name}: {exc}") from None


def _server_name(v: _Values, name: str) -> str | None:
    """A DNS name or IP literal (IPv6 without brackets) the proxies' certificates carry."""
    value = v.string(name)
    if value is None:
        return None
    try:
        if ":" in value:
            return str(ipaddress.IPv6Address(value))
        return parse_route(f"{value}:1").host or None
    except (ValueError, InvalidRoute):
        raise ConfigError(f"--{name}: {_q(value)} is not a host name or IP address") from None


def _check_connector_verification(tls: ConnectorTls) -> None:
    """TLS towards the proxies must verify against something the operator chose."""
    if tls.enable and not (
        tls.insecure_skip_verify or tls.root_ca_file is not None or tls.use_system_pool
    ):
        raise ConfigError(
            "--http-connector.tls.enable requires --http-connector.tls.file.root-ca or "
            "--http-connector.tls.use-system-pool (or --http-connector.tls.insecure-skip-verify)"
        )


def _token(v: _Values, name: str) -> tuple[str, Path | None]:
    """The JWT from the flag or from ``file:PATH`` (and that path); messages never
    contain the token."""
    source = v.string(name)
    if source is None:
        raise ConfigError(f"--{name} is required with --auth.type jwt")
    if not source.startswith(TOKEN_FILE_PREFIX):
        return source, None
    filename = source[len(TOKEN_FILE_PREFIX) :].strip()
    if not filename:
        raise ConfigError(f"--{name}: 'file:' needs a file name")
    try:
        return read_token_file(Path(filename)), Path(filename)
    except TokenFileError as exc:
        raise ConfigError(f"--{name}: {exc}") from None
