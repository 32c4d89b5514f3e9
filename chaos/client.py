"""The one HTTP client of a chaos run: every request to a node goes through it.

It logs in (POST /login, then `Authorization: Bearer`) when the node serves authentication and
credentials were given, and works without when the node has no /login. An unreachable, paused
or failing node is status 0, never an exception: the load and the nemesis carry on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

UNREACHABLE = 0


class Client:
    def __init__(
        self,
        addresses: Mapping[str, str],
        http: aiohttp.ClientSession,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """`addresses`: node id -> host:port of its HTTP API."""
        self.addresses = dict(addresses)
        self.http = http
        self.credentials = credentials
        self._tokens: dict[str, str | None] = {}  # node -> token; None: the node has no /login
        self.requests = 0

    def url(self, node: str, path: str) -> str:
        return f"http://{self.addresses[node]}{path}"

    async def get(self, node: str, path: str) -> tuple[int, Any]:
        return await self.request("GET", node, path)

    async def post(self, node: str, path: str, body: object = None) -> tuple[int, Any]:
        return await self.request("POST", node, path, {} if body is None else body)

    async def request(
        self, method: str, node: str, path: str, body: object = None
    ) -> tuple[int, Any]:
        for attempt in range(2):
            headers = await self._auth(node)
            status, reply = await self._send(method, node, path, body, headers)
            if status != 401 or attempt == 1:
                return status, reply
            self._tokens.pop(node, None)  # expired or the node restarted: log in again
        raise AssertionError("unreachable")

    async def _auth(self, node: str) -> dict[str, str]:
        if self.credentials is None:
            return {}
        if node not in self._tokens:
            user, password = self.credentials
            status, reply = await self._send(
                "POST", node, "/login", {"user": user, "password": password}, {}
            )
            if status == 200 and isinstance(reply, dict) and "token" in reply:
                self._tokens[node] = str(reply["token"])
            elif status in (404, 405):
                self._tokens[node] = None  # no authentication on this node
            else:
                return {}  # unreachable now: try again on the next request
        token = self._tokens.get(node)
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def _send(
        self, method: str, node: str, path: str, body: object, headers: dict[str, str]
    ) -> tuple[int, Any]:
        self.requests += 1
        try:
            async with self.http.request(
                method, self.url(node, path), json=body, headers=headers
            ) as response:
                text = await response.text()
                try:
                    return response.status, json.loads(text) if text else None
                except ValueError:
                    return response.status, text
        except (aiohttp.ClientError, TimeoutError, OSError):
            return UNREACHABLE, None
