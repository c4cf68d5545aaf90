"""Which QUIC connection serves which agent id: one connection per agent."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..logs import log_fields
from ..netaddr import format_address
from ..quic import Connection

log = logging.getLogger(__name__)

CODE_REPLACED = 409
REASON_REPLACED = "closing old connection"


class AgentRegistry:
    def __init__(self) -> None:
        self._agents: dict[str, Connection] = {}
        #: Told about every agent that (dis)connects here, e.g. the route registrar.
        self.on_up: Callable[[str], None] | None = None
        self.on_down: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._agents)

    def get(self, agent_id: str) -> Connection | None:
        conn = self._agents.get(agent_id)
        if conn is not None and conn.is_closed:
            return None
        return conn

    def agent_ids(self) -> list[str]:
        return list(self._agents)

    def connections(self) -> list[Connection]:
        return list(self._agents.values())

    def register(self, agent_id: str, conn: Connection) -> None:
        """Keep the NEW connection; the old one is closed with 409, as the reference does."""
        old = self._agents.get(agent_id)
        self._agents[agent_id] = conn
        if self.on_up is not None:
            self.on_up(agent_id)
        if old is not None and old is not conn:
            new_address = format_address(conn.peer_address)
            old_address = format_address(old.peer_address)
            # A warning: an agent that restarts never sees it (its old connection is
            # dead), so a 409 that repeats means two agents run with this id.
            log.warning(
                "agent %s connected from %s while already connected from %s: closing the "
                "older connection; if this repeats, two agents share this id",
                agent_id,
                new_address,
                old_address,
                extra=log_fields(
                    agent_id=agent_id, address=new_address, replaced_address=old_address
                ),
            )
            old.abort(CODE_REPLACED, REASON_REPLACED)

    def unregister(self, agent_id: str, conn: Connection) -> bool:
        """Forget ``conn`` unless a newer connection already took its place."""
        if self._agents.get(agent_id) is conn:
            del self._agents[agent_id]
            if self.on_down is not None:
                self.on_down(agent_id)
            return True
        return False
