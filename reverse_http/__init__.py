"""reverse-http: a reverse HTTP proxy over QUIC."""

__version__ = "0.1.0"
