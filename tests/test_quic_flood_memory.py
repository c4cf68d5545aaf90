"""What a flood leaves behind is released once it is over (issue 11: RSS falls back)."""

from __future__ import annotations

import gc
import os
import re
import weakref

import trio
import trio.testing
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.packet import pull_quic_header
from prometheus_client import CollectorRegistry, generate_latest

from reverse_http.devcerts import CertFiles
from reverse_http.proxy.quic_metrics import watch_agent_server
from reverse_http.quic import AdmissionSettings
from reverse_http.quic.admission import QUIET_AFTER_LOAD, RELEASE_INTERVAL, Admission
from reverse_http.quic.driver import Driver
from reverse_http.quic.initial import cached_keys, forget_keys, keep_keys, opens_handshake
from reverse_http.quic.trim import release_free_memory, resident_bytes
from tests.quic_helpers import DueConnection, quic_pair
from tests.test_quic_initial import initial_with

CLIENT_HELLO = bytes([0x06, 0, 4]) + b"helo"


def _junk_initial() -> bytes:
    """A version 1 Initial header with a fresh DCID and a payload that cannot decrypt."""
    data = bytearray(initial_with(CLIENT_HELLO, dcid=os.urandom(8)))
    data[40:] = os.urandom(len(data) - 40)
    return bytes(data)


def test_keys_of_initials_that_do_not_decrypt_are_not_kept() -> None:
    """Each pair holds four OpenSSL cipher contexts: random CIDs filled the cache for good."""
    forget_keys()
    assert not any(opens_handshake(_junk_initial(), 8) for _ in range(200))
    assert not keep_keys(bytes(8), 1)  # nothing decrypted: nothing to keep
    assert cached_keys() == 0


def test_only_the_keys_of_initials_dropped_by_a_limit_are_kept() -> None:
    """A flood of real Initials under fresh CIDs is answered with Retries (each client
    then uses another CID): checking them must leave no keys behind; a client dropped by
    a limit resends under the same CID, so its keys are worth keeping."""
    forget_keys()
    dcids = [os.urandom(8) for _ in range(300)]
    assert all(opens_handshake(initial_with(CLIENT_HELLO, dcid=dcid), 8) for dcid in dcids)
    assert cached_keys() == 0
    assert not keep_keys(dcids[0], 1)  # not the last one checked: its keys are gone
    assert keep_keys(dcids[-1], 1) and keep_keys(dcids[-1], 1)
    assert not keep_keys(dcids[-1], 2)  # another version, other keys
    assert cached_keys() == 1
    assert forget_keys() == 1 and cached_keys() == 0


def test_a_load_episode_is_over_once_after_a_quiet_spell() -> None:
    adm = Admission(AdmissionSettings(), now=0.0)
    assert not adm.load_is_over(100.0)  # nothing happened: nothing to release
    for i in range(50):
        adm.drop("undecryptable", 100.0 + i * 0.01)
    adm.initial_seen(101.0)
    adm.started("a")  # a handshake still in progress: not over until it ends
    assert not adm.load_is_over(101.0 + QUIET_AFTER_LOAD - 0.1)
    assert not adm.load_is_over(101.0 + QUIET_AFTER_LOAD)
    adm.finished("a")
    assert adm.load_is_over(101.0 + QUIET_AFTER_LOAD)
    assert not adm.load_is_over(101.0 + QUIET_AFTER_LOAD + 1)  # once per episode
    # A second burst right after: released no sooner than RELEASE_INTERVAL after the last.
    adm.initial_seen(107.0)
    assert not adm.load_is_over(107.0 + QUIET_AFTER_LOAD)
    assert adm.load_is_over(101.0 + QUIET_AFTER_LOAD + RELEASE_INTERVAL)


def test_the_heap_is_trimmed_on_glibc() -> None:
    import platform

    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")


async def test_a_live_server_drops_a_floods_cached_keys_when_it_is_over(
    certs: CertFiles,
) -> None:
    forget_keys()
    async with quic_pair(certs, admission=AdmissionSettings(retry=True)) as pair:
        server = pair.server
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        peer = ("127.0.0.1", server.local_address[1])
        for _ in range(100):  # real Initials, each under a fresh CID: Retry for each
            await sock.sendto(initial_with(CLIENT_HELLO, dcid=os.urandom(8)), peer)
            await sock.sendto(_junk_initial(), peer)
        with trio.fail_after(5):
            while server.retries_sent < 200:  # the junk too: a Retry needs no decryption
                await trio.sleep(0.01)
        assert server.initials_refused == 0
        assert cached_keys() == 0  # answered with Retries: no keys derived, none kept
        assert len(server.admission.recent_retries) >= 100
        # One dropped by a limit (its client resends under the same CID) keeps its keys.
        data = initial_with(CLIENT_HELLO, dcid=os.urandom(8))
        header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        server.admission.settings = AdmissionSettings(retry_initial_rate=1e9)
        now = trio.current_time()
        assert not server._new_connection(data, ("127.0.0.1", 9), header, now, may_create=False)
        assert server.initials_dropped["busy"] == 1 and cached_keys() == 1
        assert not server.release_after_load(now)  # the flood just ended
        assert server.release_after_load(now + QUIET_AFTER_LOAD + 0.1)
        assert cached_keys() == 0
        assert len(server.admission.recent_retries) == 0  # nothing pruned them: no Initials
        assert server.memory_releases == 1
        sock.close()
        # what the proxy's metrics endpoint shows of it
        registry = CollectorRegistry()
        watch_agent_server(registry, server)
        text = generate_latest(registry).decode()
        assert "reverse_http_quic_memory_releases_total 1.0" in text
        released = re.search(r"^reverse_http_quic_memory_released_bytes_total (\S+)$", text, re.M)
        assert released and float(released.group(1)) == server.memory_released_bytes >= 0


def test_resident_bytes_is_this_processs_rss() -> None:
    """What a release gave back is measured as the RSS difference around it."""
    rss = resident_bytes()
    assert rss is not None  # Linux
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    kib = int(status["VmRSS"].split()[0])
    assert abs(rss / 1024 - kib) < 4096  # the same figure, give or take what moved between


async def test_the_driver_keeps_no_connection_it_serviced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A flood's half-open connections end at their handshake timeout; the driver's task
    held the last one it serviced (its TLS state, its packet spaces) until the next
    deadline came, which on a quiet proxy may be never."""
    driver = Driver(lambda datagrams: None)
    conn = DueConnection()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        driver.add(conn)  # type: ignore[arg-type]
        driver.schedule(conn, trio.current_time() + 1.0)  # type: ignore[arg-type]
        await conn.serviced.wait()
        driver.remove(conn)  # type: ignore[arg-type]
        gone = weakref.ref(conn)
        del conn
        await trio.sleep(60)  # the driver sleeps: nothing is due
        gc.collect()
        assert gone() is None
        nursery.cancel_scope.cancel()


async def test_the_driver_keeps_no_removed_connection_until_its_old_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection removed before its deadline (a half-open handshake given up, its
    idle timer 30 s away) is freed at once: the deadline heap held it until then."""
    driver = Driver(lambda datagrams: None)
    conn, other = DueConnection(), DueConnection()
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        driver.add(conn)  # type: ignore[arg-type]
        driver.add(other)  # type: ignore[arg-type]
        driver.schedule(conn, t0 + 30.0)  # type: ignore[arg-type]
        driver.schedule(other, t0 + 1.0)  # type: ignore[arg-type]
        await trio.sleep(0.5)
        driver.remove(conn)  # type: ignore[arg-type]
        gone = weakref.ref(conn)
        del conn
        gc.collect()
        assert gone() is None
        await other.serviced.wait()  # the other connection's deadline still works
        assert other.serviced_at == [t0 + 1.0]
        nursery.cancel_scope.cancel()


def test_the_end_of_an_episode_leaves_fresh_admission_tables() -> None:
    """Remembered Retries and given-up attempts are pruned only as new Initials come; once
    the load is over none come, and a flood's 4096 Retries stayed resident."""
    adm = Admission(AdmissionSettings(), now=0.0)
    for i in range(5000):
        adm.recent_retries.remember(i.to_bytes(8, "big"), ("127.0.0.1", i), bytes(100), 1.0)
    adm.initial_seen(1.0)
    assert len(adm.recent_retries) == 4096
    assert adm.load_is_over(1.0 + QUIET_AFTER_LOAD)
    adm.forget_episode()
    assert len(adm.recent_retries) == 0
    assert adm.recent_retries.recall((1).to_bytes(8, "big"), ("127.0.0.1", 1), 7.0) is None
