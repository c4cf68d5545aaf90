"""Errors a user can fix; the CLI prints them as one line and exits 1, as Go's does."""


class ConfigError(Exception):
    """Bad configuration or environment at start-up; the message names the flag or file."""
