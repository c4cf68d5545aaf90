"""Garbage-collector settings for the long-running daemons.

A tunnel daemon allocates many short-lived objects per packet (frames, sent-packet
records, events) that live until the peer acknowledges them. Under load that takes
long enough for CPython's default young generation (700 objects) to promote them,
and every full collection then walks the whole heap: with 10,000 open tunnels
(hundreds of MiB) that was 29% of the agent's CPU. A larger young generation lets
them die young, and freezing what start-up created keeps it out of every scan.
"""

from __future__ import annotations

import gc

#: Net allocations between young collections (CPython's default is 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, middle ones per full one (CPython's defaults).
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 10


def defer_collections() -> None:
    """The daemon's thresholds from the start of the process, before the imports.

    Importing the command line and a daemon allocates ~50,000 objects that all stay:
    with the default thresholds that ran a dozen collections over them (~40 ms of a
    daemon's start-up) that find almost nothing to free.
    """
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def tune_for_daemon() -> None:
    """Set the daemon's collector thresholds and freeze what start-up allocated."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
