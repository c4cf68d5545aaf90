"""Fixtures shared by every test: throwaway certificates, free ports, processes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from reverse_http.devcerts import CertFiles, make_dev_certs

REPO_ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_dev_certs(tmp_path_factory.mktemp("certs"))


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out; bind races are possible but rare on loopback."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


@pytest.fixture
def tcp_port() -> Iterator[int]:
    yield free_port(socket.SOCK_STREAM)
