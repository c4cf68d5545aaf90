"""Live interop with the real Go reference (grepplabs/reverse-http at a pinned commit).

Run by ``nox -s interop``: our proxy, agent and lb against the Go programs, in every mix,
over real loopback sockets, with curl as the client and a real memcached. The reference
binary comes from ``$REVERSE_HTTP_GO_REFERENCE`` (built by hand) or from
``go install`` of the pinned commit, cached per commit. Without any Go toolchain the
tests skip with one line; with Go but no way to build the reference they skip, unless
``REVERSE_HTTP_INTEROP=required`` (the nox session sets it), where they fail and quote
the module proxy's answer. Nothing of the reference is kept in this repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Memcached, free_ports
from reverse_http.devcerts import CertFiles, issue_cert
from tests.go_peer import Process, ProcessGroup, cache_root, go_env, go_executable
from tests.ha_cluster import reverse_http_exe, wait_tcp
from tests.test_go_interop import (
    BIG,
    HELLO,
    connect_status,
    curl,
    fetch,
    go_reference_keys,
    mint_keys,
    payload,
    target,  # noqa: F401  (a fixture)
    token_file,
)
from tests.test_tls_files import make_crl

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

REFERENCE_MODULE = "github.com/grepplabs/reverse-http"
REFERENCE_COMMIT = "1ad738883b240e0ad6ba7fbacf9ae04cb609b4d2"
INSTALL_TIMEOUT = 120.0


def _unavailable(reason: str) -> None:
    if os.environ.get("REVERSE_HTTP_INTEROP") == "required":
        pytest.fail(f"cannot build the Go reference for the interop session: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def reference() -> Path:
    """The Go reference binary (see the module docstring for where it comes from)."""
    prebuilt = os.environ.get("REVERSE_HTTP_GO_REFERENCE")
    if prebuilt:
        path = Path(prebuilt)
        if not os.access(path, os.X_OK):
            pytest.fail(f"REVERSE_HTTP_GO_REFERENCE={prebuilt}: not an executable file")
        return path
    go = go_executable()
    if go is None:
        pytest.skip("Go is not installed: the live tests against the Go reference skip")
    directory = cache_root() / f"go-reference-{REFERENCE_COMMIT[:12]}"
    binary = directory / "reverse-http"
    if binary.exists():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    module = f"{REFERENCE_MODULE}@{REFERENCE_COMMIT}"
    try:
        done = subprocess.run(
            [go, "install", module],
            env=go_env(GOBIN=str(directory)),
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            cwd=directory,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"go install {module} took over {INSTALL_TIMEOUT:.0f}s")
    if done.returncode != 0:
        _unavailable(f"go install {module} failed: {done.stderr.strip()[-1500:]}")
    print(f"\n[go-reference] built {binary}", file=sys.stderr)
    return binary


# ------------------------------------------------------------------ processes


@dataclass
class Proxy:
    kind: str  # "go" or "ours"
    process: Process
    agent_port: int
    http_port: int


@dataclass
class Mix(ProcessGroup):
    """Starts our daemons and the Go reference's for one test; stops them at its end."""

    reference: Path
    certs: CertFiles

    def exe(self, kind: str) -> list[str]:
        return [str(self.reference)] if kind == "go" else reverse_http_exe()

    def proxy(
        self,
        kind: str,
        *args: str,
        http_listen: str = "127.0.0.1:{port}",
        tls: tuple[str, ...] | None = None,
    ) -> Proxy:
        (http,) = free_ports(1)
        (udp,) = free_ports(1, socket.SOCK_DGRAM)
        extra = ["--shutdown-grace-period=1s", "--log.level=debug"] if kind == "ours" else []
        process = self.start(
            f"{kind}-proxy",
            [
                *self.exe(kind),
                "proxy",
                f"--agent-server.listen-address=127.0.0.1:{udp}",
                *(
                    tls
                    or (
                        f"--agent-server.tls.file.key={self.certs.key}",
                        f"--agent-server.tls.file.cert={self.certs.cert}",
                    )
                ),
                f"--http-proxy.listen-address={http_listen.format(port=http)}",
                *args,
                *extra,
            ],
        )
        wait_tcp(http)
        return Proxy(kind, process, udp, http)

    def agent(self, kind: str, proxy: Proxy, *args: str) -> Process:
        return self.start(
            f"{kind}-agent",
            [
                *self.exe(kind),
                "agent",
                f"--agent-client.server-address=127.0.0.1:{proxy.agent_port}",
                f"--agent-client.tls.file.root-ca={self.certs.ca_cert}",
                *args,
            ],
        )

    def lb(self, kind: str, memcached: Memcached, *args: str) -> int:
        (http,) = free_ports(1)
        self.start(
            f"{kind}-lb",
            [
                *self.exe(kind),
                "lb",
                f"--http-proxy.listen-address=127.0.0.1:{http}",
                "--store.type=memcached",
                f"--store.memcached.address={memcached.address}",
                *args,
            ],
        )
        wait_tcp(http)
        return http


@pytest.fixture
def mix(reference: Path, certs: CertFiles) -> Iterator[Mix]:
    with tempfile.TemporaryDirectory(prefix="go-reference-") as workdir:
        environment = Mix(reference, certs, workdir=Path(workdir))
        try:
            yield environment
        finally:
            environment.stop()
        environment.assert_no_traceback("ours-")


def connected(agent: Process, proxy: Proxy, agent_id: str, count: int = 1) -> None:
    """Wait until ``proxy`` holds ``agent_id``, in the words each program logs."""
    if proxy.kind == "go":
        proxy.process.wait_for(f"authenticated agent {agent_id}", count=count)
    else:
        proxy.process.wait_for(f"agent {agent_id} connected", count=count)
    agent.wait_for("waiting for clients" if agent.name.startswith("go-") else "connected to proxy")


def noauth(agent_id: str) -> tuple[str, ...]:
    return ("--auth.type=noauth", f"--auth.noauth.agent-id={agent_id}")


KINDS = ("go", "ours")


# ------------------------------------------------------------------ tunnels


@pytest.mark.parametrize("agent_kind", KINDS)
@pytest.mark.parametrize("proxy_kind", KINDS)
def test_noauth_every_mix(mix: Mix, target: int, proxy_kind: str, agent_kind: str) -> None:  # noqa: F811
    proxy = mix.proxy(proxy_kind, "--auth.type=noauth")
    agent = mix.agent(agent_kind, proxy, *noauth("4711"))
    connected(agent, proxy, "4711")
    assert fetch(proxy.http_port, "4711", "x", f"http://127.0.0.1:{target}/") == HELLO
    # no agent by that name: both proxies answer 503
    assert connect_status(proxy.http_port, "4712", "x", f"127.0.0.1:{target}") == 503


@pytest.mark.parametrize("algo", ["ES256", "RS256"])
@pytest.mark.parametrize("minted_by", KINDS)
def test_jwt_both_directions(
    mix: Mix,
    target: int,  # noqa: F811
    tmp_path: Path,
    minted_by: str,
    algo: str,
) -> None:
    """Keys and tokens minted by either program work in both mixes; agent tokens come
    from a file that ends in a newline (``echo $TOKEN > file``)."""
    keys = mint_keys(mix.exe(minted_by), tmp_path, algo, f"{algo} ({minted_by})")
    public, tokens = keys.public, keys.tokens
    jwt = ("--auth.type=jwt", f"--auth.jwt.public-key={public}")
    for proxy_kind, agent_kind in (("ours", "go"), ("go", "ours")):
        proxy = mix.proxy(proxy_kind, *jwt)
        token = token_file(tmp_path, f"{agent_kind}-agent.jwt", tokens["agent-4711"])
        agent = mix.agent(agent_kind, proxy, "--auth.type=jwt", f"--auth.jwt.token=file:{token}")
        connected(agent, proxy, "4711")
        url = f"http://127.0.0.1:{target}/"
        assert fetch(proxy.http_port, "4711", tokens["client-4711"], url) == HELLO
        where = f"127.0.0.1:{target}"
        # another agent's client token, an agent token, no token: 407 from both
        assert connect_status(proxy.http_port, "4711", tokens["client-4712"], where) == 407
        assert connect_status(proxy.http_port, "4711", tokens["agent-4711"], where) == 407
        assert connect_status(proxy.http_port, "4711", "", where) == 407


def test_go_minted_vectors_with_our_proxy_and_go_agent(mix: Mix, target: int) -> None:  # noqa: F811
    """The checked-in vectors the Go reference produced (../shared/interop)."""
    keys = go_reference_keys()
    proxy = mix.proxy("ours", "--auth.type=jwt", f"--auth.jwt.public-key={keys.public}")
    agent = mix.agent(
        "go", proxy, "--auth.type=jwt", f"--auth.jwt.token={keys.token('agent', '4711')}"
    )
    connected(agent, proxy, "4711")
    url = f"http://127.0.0.1:{target}/"
    assert fetch(proxy.http_port, "4711", keys.token("client", "4711"), url) == HELLO


@pytest.mark.parametrize(
    ("proxy_kind", "old_kind", "new_kind"),
    [("ours", "go", "ours"), ("ours", "ours", "go"), ("go", "go", "ours"), ("go", "ours", "go")],
)
def test_replacement(
    mix: Mix,
    target: int,  # noqa: F811
    proxy_kind: str,
    old_kind: str,
    new_kind: str,
) -> None:
    """A second agent with a held id replaces the first (409 to the old one); once the
    old one is gone, the new one serves: the old connection's end must not unregister
    the new one."""
    proxy = mix.proxy(proxy_kind, "--auth.type=noauth")
    old = mix.agent(old_kind, proxy, *noauth("4711"))
    connected(old, proxy, "4711")
    new = mix.agent(new_kind, proxy, *noauth("4711"))
    connected(new, proxy, "4711", count=2)
    if old_kind == "go":
        old.wait_for("closing old connection")
    else:
        old.wait_for("another connection authenticated as agent 4711")
    old.stop()
    assert fetch(proxy.http_port, "4711", "x", f"http://127.0.0.1:{target}/") == HELLO


@pytest.mark.parametrize(("proxy_kind", "agent_kind"), [("ours", "go"), ("go", "ours")])
def test_bulk_download_is_byte_identical(
    mix: Mix,
    target: int,  # noqa: F811
    tmp_path: Path,
    proxy_kind: str,
    agent_kind: str,
) -> None:
    proxy = mix.proxy(proxy_kind, "--auth.type=noauth")
    agent = mix.agent(agent_kind, proxy, *noauth("4711"))
    connected(agent, proxy, "4711")
    out = tmp_path / "big"
    done = curl(
        proxy.http_port, "4711", "x", f"http://127.0.0.1:{target}/bytes/{BIG}", "-o", str(out)
    )
    assert done.returncode == 0, done.stderr + mix.logs()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload(BIG)).digest()


# ------------------------------------------------------------------ answers


def test_failure_codes_match(mix: Mix, target: int, tmp_path: Path) -> None:  # noqa: F811
    """The same requests get the same status from both proxies, except the one
    documented difference (docs/compatibility.md): the agent's allow-list refusal reaches
    the client as 403 through ours and as 503 through the Go proxy."""
    keys = mint_keys(mix.exe("go"), tmp_path, "ES256", "ES256 (go)")
    public, tokens = keys.public, keys.tokens
    jwt = ("--auth.type=jwt", f"--auth.jwt.public-key={public}")
    (closed_port,) = free_ports(1)
    statuses: dict[str, dict[str, int]] = {}
    for proxy_kind, agent_kind in (("ours", "go"), ("go", "ours")):
        proxy = mix.proxy(proxy_kind, *jwt, "--http-proxy.host-whitelist=127.0.0.1,127.0.0.2")
        agent = mix.agent(
            agent_kind,
            proxy,
            "--auth.type=jwt",
            f"--auth.jwt.token={tokens['agent-4711']}",
            "--agent-client.host-whitelist=127.0.0.1",
        )
        connected(agent, proxy, "4711")
        port, good = proxy.http_port, tokens["client-4711"]
        statuses[proxy_kind] = {
            "ok": connect_status(port, "4711", good, f"127.0.0.1:{target}"),
            "no credentials": connect_status(port, "", "", f"127.0.0.1:{target}"),
            "bad token": connect_status(port, "4711", "not.a.jwt", f"127.0.0.1:{target}"),
            "other agent's token": connect_status(
                port, "4711", tokens["client-4712"], f"127.0.0.1:{target}"
            ),
            "agent role": connect_status(port, "4711", tokens["agent-4711"], f"127.0.0.1:{target}"),
            "unknown agent": connect_status(
                port, "4712", tokens["client-4712"], f"127.0.0.1:{target}"
            ),
            "proxy allow-list": connect_status(port, "4711", good, f"localhost:{target}"),
            "target refused": connect_status(port, "4711", good, f"127.0.0.1:{closed_port}"),
            "agent allow-list": connect_status(port, "4711", good, f"127.0.0.2:{target}"),
        }
        done = subprocess.run(
            ["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        statuses[proxy_kind]["plain GET"] = int(done.stdout or 0)
    ours, go = statuses["ours"], statuses["go"]
    assert ours.pop("agent allow-list") == 403 and go.pop("agent allow-list") == 503
    assert ours == go, statuses
    assert go == {
        "ok": 200,
        "no credentials": 407,
        "bad token": 407,
        "other agent's token": 407,
        "agent role": 407,
        "unknown agent": 503,
        "proxy allow-list": 403,
        "target refused": 503,
        "plain GET": 405,
    }


def test_empty_agent_id_jwt(mix: Mix) -> None:
    """A validly signed agent token without ``agent_id``: both proxies refuse the agent
    with 400 "empty agent id", and each agent reports the refusal."""
    from tests.test_go_interop import empty_id_agent_token

    keys = go_reference_keys()
    jwt = ("--auth.type=jwt", f"--auth.jwt.public-key={keys.public}")
    token = ("--auth.type=jwt", f"--auth.jwt.token={empty_id_agent_token()}")
    ours = mix.proxy("ours", *jwt)
    go_agent = mix.agent("go", ours, *token)
    ours.process.wait_for("refused: empty agent id")
    go_agent.wait_for("Application error 0x190 (remote): empty agent id")
    go = mix.proxy("go", *jwt)
    our_agent = mix.agent("ours", go, *token)
    go.process.wait_for("empty agent id")
    our_agent.wait_for("refused authentication: empty agent id")


# ------------------------------------------------------------------ HA


def test_lbs_and_proxies_of_both_over_one_memcached(
    mix: Mix,
    target: int,  # noqa: F811
    memcached: Memcached,
) -> None:
    """Our proxy and the Go proxy register in one memcached; our lb and the Go lb each
    reach the agents of both. The Go proxy stores its default address (``:PORT``, no
    host). An agent that left either proxy gets from both lbs what an unknown agent gets,
    so neither program's entries (our TTLs and tombstones, the Go proxy's deletes)
    confuse the other's lb."""
    store = ("--store.type=memcached", f"--store.memcached.address={memcached.address}")
    ours = mix.proxy("ours", "--auth.type=noauth", *store)
    go = mix.proxy("go", "--auth.type=noauth", *store, http_listen=":{port}")
    agent_at_ours = mix.agent("go", ours, *noauth("4711"))
    agent_at_go = mix.agent("ours", go, *noauth("4712"))
    connected(agent_at_ours, ours, "4711")
    connected(agent_at_go, go, "4712")
    lbs = {"ours": mix.lb("ours", memcached, "--auth.type=noauth"), "go": mix.lb("go", memcached)}
    url = f"http://127.0.0.1:{target}/"
    for lb in lbs.values():
        for agent_id in ("4711", "4712"):
            assert fetch(lb, agent_id, "x", url) == HELLO
    unknown = {
        k: connect_status(port, "4799", "x", f"127.0.0.1:{target}") for k, port in lbs.items()
    }
    agent_at_ours.stop()
    agent_at_go.stop()
    ours.process.wait_for("agent 4711 from")
    go.process.wait_for("removed connection")
    for kind, port in lbs.items():
        for agent_id in ("4711", "4712"):
            status = connect_status(port, agent_id, "x", f"127.0.0.1:{target}")
            assert status == unknown[kind], (kind, agent_id, status, unknown, mix.logs())


# ------------------------------------------------------------------ TLS


def client_pki(certs: CertFiles, directory: Path) -> dict[str, tuple[Path, Path]]:
    """A good and a revoked client certificate of the dev CA, and a CRL naming the second."""
    directory.mkdir(parents=True, exist_ok=True)
    issued = {
        name: issue_cert(directory, certs.ca_cert, certs.ca_key, name, [name], client=True)
        for name in ("good", "revoked")
    }
    make_crl(certs.ca_cert, certs.ca_key, directory / "crl.pem", [issued["revoked"][0]])
    return issued


@pytest.mark.parametrize(("proxy_kind", "agent_kind"), [("ours", "go"), ("go", "ours")])
def test_agent_certificates_and_crl(
    mix: Mix,
    target: int,  # noqa: F811
    tmp_path: Path,
    proxy_kind: str,
    agent_kind: str,
) -> None:
    """Agent mTLS with a CRL: a good certificate connects; a revoked one, one of another
    CA and none are refused by either proxy, for either agent, with the same TLS alert in
    a transport CONNECTION_CLOSE (CRYPTO_ERROR 0x100 + alert): bad_certificate,
    unknown_ca, certificate_required. Our proxy logs why; our agent says the proxy
    refused its certificate."""
    from reverse_http.devcerts import make_ca

    issued = client_pki(mix.certs, tmp_path / "pki")
    (tmp_path / "rogue").mkdir()
    rogue_ca, rogue_ca_key = make_ca(tmp_path / "rogue")
    issued["rogue"] = issue_cert(
        tmp_path / "rogue", rogue_ca, rogue_ca_key, "rogue", ["rogue"], client=True
    )
    proxy = mix.proxy(
        proxy_kind,
        "--auth.type=noauth",
        tls=(
            f"--agent-server.tls.file.key={mix.certs.key}",
            f"--agent-server.tls.file.cert={mix.certs.cert}",
            f"--agent-server.tls.file.client-ca={mix.certs.ca_cert}",
            f"--agent-server.tls.file.client-crl={tmp_path / 'pki' / 'crl.pem'}",
        ),
    )
    cert, key = issued["good"]
    good = mix.agent(
        agent_kind,
        proxy,
        *noauth("4711"),
        f"--agent-client.tls.file.cert={cert}",
        f"--agent-client.tls.file.key={key}",
    )
    connected(good, proxy, "4711")
    assert fetch(proxy.http_port, "4711", "x", f"http://127.0.0.1:{target}/") == HELLO
    debug = ("--log.level=debug",) if agent_kind == "ours" else ()  # repeats show there
    refusals = {"4712": ("revoked", 0x12A), "4713": ("rogue", 0x130), "4714": (None, 0x174)}
    for agent_id, (name, code) in refusals.items():
        pair = issued[name] if name else None
        with_cert = (
            (f"--agent-client.tls.file.cert={pair[0]}", f"--agent-client.tls.file.key={pair[1]}")
            if pair
            else ()
        )
        refused = mix.agent(agent_kind, proxy, *noauth(agent_id), *with_cert, *debug)
        # refused at least twice (it retries): never admitted in between
        if agent_kind == "go":
            refused.wait_for(f"CRYPTO_ERROR 0x{code:x} (remote) (frame type: 0x6)", count=2)
        else:
            refused.wait_for("proxy refused our client certificate (", count=2)
            assert f"(code 0x{code:x})" in refused.log(), refused.log()
        if proxy_kind == "ours":
            proxy.process.wait_for("refused in the TLS handshake: client certificate")
            assert f"code 0x{code:x})" in proxy.process.log()
        assert connect_status(proxy.http_port, agent_id, "x", f"127.0.0.1:{target}") == 503
        refused.stop()


def test_our_proxy_rereads_the_crl_on_sighup(mix: Mix, target: int, tmp_path: Path) -> None:  # noqa: F811
    """The Go reference's agent with a certificate that is revoked after our proxy started:
    admitted before, refused after the new CRL and a SIGHUP."""
    issued = client_pki(mix.certs, tmp_path / "pki")
    crl = tmp_path / "pki" / "crl.pem"
    proxy = mix.proxy(
        "ours",
        "--auth.type=noauth",
        tls=(
            f"--agent-server.tls.file.key={mix.certs.key}",
            f"--agent-server.tls.file.cert={mix.certs.cert}",
            f"--agent-server.tls.file.client-ca={mix.certs.ca_cert}",
            f"--agent-server.tls.file.client-crl={crl}",
        ),
    )
    cert, key = issued["good"]
    tls = (f"--agent-client.tls.file.cert={cert}", f"--agent-client.tls.file.key={key}")
    first = mix.agent("go", proxy, *noauth("4711"), *tls)
    connected(first, proxy, "4711")
    first.stop()
    make_crl(mix.certs.ca_cert, mix.certs.ca_key, crl, [issued["good"][0], issued["revoked"][0]])
    assert proxy.process.proc is not None
    proxy.process.proc.send_signal(signal.SIGHUP)
    proxy.process.wait_for("loaded new TLS material")
    second = mix.agent("go", proxy, *noauth("4711"), *tls)
    second.wait_for("agent dial:", count=2)
    assert proxy.process.log().count("agent 4711 connected") == 1
    assert connect_status(proxy.http_port, "4711", "x", f"127.0.0.1:{target}") == 503


def test_http_proxy_client_certificates_and_crl(
    mix: Mix,
    target: int,  # noqa: F811
    tmp_path: Path,
) -> None:
    """HTTP-proxy mTLS with a CRL: both proxies take a good client certificate and refuse
    a revoked one and none, in the TLS handshake (curl sees no CONNECT answer)."""
    issued = client_pki(mix.certs, tmp_path / "pki")
    tls = (
        "--http-proxy.tls.enable",
        f"--http-proxy.tls.file.cert={mix.certs.cert}",
        f"--http-proxy.tls.file.key={mix.certs.key}",
        f"--http-proxy.tls.file.client-ca={mix.certs.ca_cert}",
        f"--http-proxy.tls.file.client-crl={tmp_path / 'pki' / 'crl.pem'}",
    )

    def through(port: int, *client: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *("curl", "-sS", "-p", "-x", f"https://127.0.0.1:{port}", "--proxy-user", "4711:x"),
                *("--proxy-cacert", str(mix.certs.ca_cert), *client, "--max-time", "20"),
                f"http://127.0.0.1:{target}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    for proxy_kind, agent_kind in (("ours", "go"), ("go", "ours")):
        proxy = mix.proxy(proxy_kind, "--auth.type=noauth", *tls)
        agent = mix.agent(agent_kind, proxy, *noauth("4711"))
        connected(agent, proxy, "4711")
        good, revoked = issued["good"], issued["revoked"]
        ok = through(proxy.http_port, "--proxy-cert", str(good[0]), "--proxy-key", str(good[1]))
        assert ok.returncode == 0 and ok.stdout.encode() == HELLO, (proxy_kind, ok.stderr)
        for client in (("--proxy-cert", str(revoked[0]), "--proxy-key", str(revoked[1])), ()):
            refused = through(proxy.http_port, *client)
            assert refused.returncode != 0 and not refused.stdout, (proxy_kind, client)


def test_go_config_files_work_unchanged_with_ours(
    mix: Mix,
    target: int,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same two home-directory files, as the Go reference reads them (JSON with
    ``_`` keys, flat and nested; YAML with a ``proxy:`` section, read after the JSON and
    overriding it), configure the Go proxy and ours alike. Each runs in a private mount
    namespace where the files are laid over the home directory (from the password
    database) with overlayfs."""
    import pwd

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) to lay files over the home directory privately")
    if any(Path("/etc/reverse-http", n).exists() for n in ("config.json", "config.yaml")):
        pytest.skip("/etc/reverse-http holds a configuration file that would be merged too")
    first, final = free_ports(2)
    (udp,) = free_ports(1, socket.SOCK_DGRAM)
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    (fake_home / ".reverse-http.json").write_text(
        f'{{"http_proxy": {{"listen_address": "127.0.0.1:{first}"}},'
        f' "agent_server.listen_address": "127.0.0.1:{udp}",'
        ' "auth": {"type": "noauth"}}'
    )
    (fake_home / ".reverse-http.yaml").write_text(
        "proxy:\n"
        f"  http-proxy.listen-address: 127.0.0.1:{final}\n"
        f"  agent-server.tls.file.key: {mix.certs.key}\n"
        f"  agent-server.tls.file.cert: {mix.certs.cert}\n"
    )
    for kind in KINDS:
        process = mix.start(
            f"{kind}-proxy",
            [
                *(
                    unshare,
                    "-m",
                    "sh",
                    "-c",
                    f'mount -t overlay overlay -o "lowerdir=$0:{home}" {home} && exec "$@"',
                ),
                *(str(fake_home), *mix.exe(kind), "proxy"),
            ],
        )
        try:
            wait_tcp(final)
        except TimeoutError:
            raise AssertionError(process.log()) from None
        proxy = Proxy(kind, process, udp, final)
        agent = mix.agent("ours" if kind == "go" else "go", proxy, *noauth("4711"))
        connected(agent, proxy, "4711")
        assert fetch(final, "4711", "x", f"http://127.0.0.1:{target}/") == HELLO
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", first), timeout=2).close()
        agent.stop()
        process.stop()
        assert process.proc is not None and process.proc.returncode == 0, process.log()


# ------------------------------------------------------------------ allow-list


def test_agent_allow_list_differs_from_go_exactly_where_ours_warns(mix: Mix) -> None:
    """The same ``--agent-client.host-whitelist`` on a Go agent and ours, behind our proxy:
    the Go agent decides by the first matching host pattern, ours by any match
    (docs/compatibility.md, Behaviour decisions). They differ on exactly the destinations
    of the entries ours warns about at start-up, and agree everywhere else. Ports are
    closed: an allowed CONNECT gets 503 (the agent's dial is refused), a refused one 403."""
    from reverse_http.allowlist import AllowList

    a, b, c = sorted(free_ports(3))
    patterns = f"127.0.0.0/8:{a},127.0.0.2:{b},localhost:{a},localhost:{b}"
    flag = f"--agent-client.host-whitelist={patterns}"
    proxy = mix.proxy("ours", "--auth.type=noauth")
    agents = {"go": "4711", "ours": "4712"}
    started = {
        kind: mix.agent(kind, proxy, *noauth(agent_id), flag) for kind, agent_id in agents.items()
    }
    for kind, agent_id in agents.items():
        connected(started[kind], proxy, agent_id)
    allowed: dict[str, set[tuple[str, int]]] = {}
    for kind, agent_id in agents.items():
        statuses = {
            (host, port): connect_status(proxy.http_port, agent_id, "x", f"{host}:{port}")
            for host in ("127.0.0.1", "127.0.0.2", "localhost")
            for port in (a, b, c)
        }
        assert set(statuses.values()) <= {403, 503}, (kind, statuses, mix.logs())
        allowed[kind] = {where for where, status in statuses.items() if status == 503}
    shadowed = AllowList.parse([patterns]).go_shadowed()
    assert [str(s.entry) for s in shadowed] == [f"127.0.0.2:{b}", f"localhost:{b}"]
    assert allowed["ours"] - allowed["go"] == {("127.0.0.2", b), ("localhost", b)}
    assert allowed["go"] <= allowed["ours"]
    assert allowed["go"] == {("127.0.0.1", a), ("127.0.0.2", a), ("localhost", a)}
    # ours said so at start-up, one warning per shadowed entry
    warnings = [line for line in started["ours"].log().splitlines() if "shadowed" in line]
    assert len(warnings) == 2, warnings
    for entry, line in zip(shadowed, warnings, strict=True):
        assert "WARN" in line and f"--agent-client.host-whitelist: {entry}" in line, line
