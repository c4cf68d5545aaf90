"""The accept loop every TCP listener of ours runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


async def accept_forever(
    listener: trio.abc.Listener[Any],
    nursery: trio.Nursery,
    handler: Callable[[Any], Awaitable[None]],
    what: str,
) -> None:
    """Accept connections and run ``handler`` for each in ``nursery``.

    EMFILE and friends back off briefly instead of spinning the loop.
    """
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            log.warning("%s accept failed: %s", what, exc)
            await trio.sleep(0.1)
            continue
        nursery.start_soon(handler, stream)
