"""Agent and client authentication at the proxy and the LB server (noauth or JWT).

Both checks hold every agent id to :mod:`reverse_http.agentid`'s rule, whichever auth
type proved it: an id that passes here is a valid route store key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import agentid
from ..config import ProxyAuth
from ..errors import ConfigError
from .basic import AuthError, parse_proxy_authorization

if TYPE_CHECKING:
    from .jwt import TokenVerifier

__all__ = ["AuthError", "Authenticator"]


@dataclass(frozen=True)
class Authenticator:
    verifier: TokenVerifier | None

    @classmethod
    def from_config(cls, config: ProxyAuth) -> Authenticator:
        if config.type == "noauth":
            return cls(None)
        from .jwt import TokenVerifier
        from .keys import KeyFileError, load_public_key

        if config.jwt_public_key is None:
            raise ConfigError("--auth.jwt.public-key is required with --auth.type jwt")
        try:
            key = load_public_key(config.jwt_public_key)
        except KeyFileError as exc:
            raise ConfigError(f"--auth.jwt.public-key: {exc}") from None
        return cls(TokenVerifier(key, audience=config.jwt_audience))

    def agent_id_for(self, token: str) -> str:
        """The agent id an agent's auth message proves; raises AuthError.

        An empty noauth id, or a valid agent JWT without an ``agent_id``, is returned as
        "": the proxy refuses it with its own close code (400), as the reference does.
        A JWT may have surrounding whitespace (see ``TokenVerifier.verify``); a noauth id
        is taken as is.
        """
        if self.verifier is None:
            agent_id = token
        else:
            from .jwt import EmptyAgentId

            try:
                agent_id = self.verifier.verify(token, "agent").agent_id
            except EmptyAgentId:
                return ""
        if agent_id:
            _check_id(agent_id, "")
        return agent_id

    def check_client(self, proxy_authorization: str | None) -> str:
        """The agent id a client may reach, from its Proxy-Authorization; raises AuthError."""
        if not proxy_authorization:
            raise AuthError("proxy authorization required")
        username, password = parse_proxy_authorization(proxy_authorization)
        if not username:
            raise AuthError("empty agent id in proxy authorization")
        _check_id(username, " in proxy authorization")
        if self.verifier is not None:
            self.verifier.verify_client(password, username)
        return username


def _check_id(agent_id: str, where: str) -> None:
    reason = agentid.problem(agent_id)
    if reason is not None:
        raise AuthError(f"invalid agent id {agentid.shown(agent_id)}{where}: {reason}")
