"""All of the load test's HTTP: one small client per node, as a real client would talk to it.

When the node serves POST /login (authentication on), the client logs in once per user and sends
`Authorization: Bearer TOKEN` (websockets: `?token=TOKEN`); a 404 on /login means authentication
is off (a development node), and requests go without a token. Callers need no login: POST /calls
answers with a `caller_token` that their own call routes accept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who the load test is: an admin (records, metrics, faults) and how its agents get tokens."""

    admin_user: str = ""
    admin_password: str = ""
    agent_password: str = ""
    """The agents' password when they log in with POST /login as themselves."""
    mint: Callable[[str], str] | None = None
    """An agent's token without a login, when the load test holds an in-house site's key (a
    cluster it started): POST /login allows a few attempts per second per client address, and
    every simulated agent comes from the same one."""


class AuthError(RuntimeError):
    code = "login_failed"


class NodeApi:
    """One node's public HTTP API (`base` is http://host:port)."""

    def __init__(
        self, http: aiohttp.ClientSession, base: str, credentials: Credentials = Credentials()
    ) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self._credentials = credentials
        self._tokens: dict[str, str | None] = {}
        self._auth: bool | None = None  # None: not asked yet
        self._locks: dict[str, asyncio.Lock] = {}
        self._warned = False

    async def token(self, user: str) -> str | None:
        """`user`'s bearer token at this node (logged in once), or None when auth is off."""
        if self._auth is False:
            return None
        if user not in self._tokens:
            lock = self._locks.setdefault(user, asyncio.Lock())
            async with lock:
                if user not in self._tokens:
                    self._tokens[user] = await self._login(user)
        return self._tokens[user]

    async def _login(self, user: str) -> str | None:
        credentials = self._credentials
        admin = credentials.admin_user
        if user == admin:
            token = await self._post_login(user, credentials.admin_password)
            if token is None and self._auth:
                raise AuthError(f"login of {user} at {self.base} refused: wrong password?")
            return token
        if credentials.mint is not None:
            return credentials.mint(user)
        token = await self._post_login(user, credentials.agent_password)
        if token is None and self._auth and admin:
            # an agent the users file does not know: act for it with the admin's token
            if not self._warned:
                self._warned = True
                log.warning(
                    "agents cannot log in at %s (%s): using the admin's token", self.base, user
                )
            return await self.token(admin)
        return token

    async def _post_login(self, user: str, password: str) -> str | None:
        body = {"user": user, "password": password}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with self.http.post(f"{self.base}/login", json=body, timeout=timeout) as response:
            if response.status == 404:  # a node without authentication (development)
                self._auth = False
                return None
            payload = await _json(response)
            self._auth = True
            if response.status in (401, 429):  # unknown user, or too many logins from here
                return None
            if response.status != 200 or not isinstance(payload, dict) or "token" not in payload:
                raise AuthError(f"login of {user} at {self.base} failed: {response.status}")
            return str(payload["token"])

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        user: str | None = None,
        token: str | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON body or text); `user` logs in (if needed), `token` is used as is."""
        if user is not None and token is None:
            token = await self.token(user)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with self.http.request(
            method,
            f"{self.base}{path}",
            json=body if method != "GET" else None,
            headers=headers,
            timeout=timeout,
        ) as response:
            return response.status, await _json(response)

    async def text(self, path: str, *, user: str | None = None) -> tuple[int, str]:
        token = await self.token(user) if user is not None else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with self.http.get(
            f"{self.base}{path}", headers=headers, timeout=timeout
        ) as response:
            return response.status, await response.text()

    async def websocket(self, path: str, *, user: str) -> aiohttp.ClientWebSocketResponse:
        token = await self.token(user)
        query = f"?token={token}" if token else ""
        return await self.http.ws_connect(f"{self.base}{path}{query}", heartbeat=30)


async def _json(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return text
