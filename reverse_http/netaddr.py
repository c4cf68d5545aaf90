"""Socket addresses as people read them."""

from __future__ import annotations


def format_address(address: object) -> str:
    """``host:port`` with IPv6 in brackets and IPv4-mapped IPv6 shown as IPv4."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
