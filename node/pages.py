"""The browser pages every node serves under /ui/: the agent's softphone, click-to-call, supervisor.

The pages are static files (node/pages/: HTML, CSS and JavaScript modules, no build step) that talk
to the node's HTTP API like any other client. They are read once when the routes are added and
served from memory with a strict Content-Security-Policy: scripts and styles only from the node
itself, no inline code, connections only back to the node (fetch, websocket).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

PAGES_DIR = Path(__file__).with_name("pages")
PREFIX = "/ui/"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self' blob: mediastream:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Sent with every page file. connect-src 'self' covers the node's own websocket (ws: on the
same host and port) in current browsers. no-cache: the browser revalidates with the ETag, so a
node upgrade reaches every page at its next load."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


def asset_name(path: str) -> str | None:
    """The file a /ui/ path names: "" and "index" are index.html, "agent" is agent.html, a name
    with an extension is itself. None for anything that is not one plain file name."""
    name = path.removeprefix(PREFIX) if path.startswith(PREFIX) else None
    if name is None or "/" in name or name.startswith("."):
        return None
    if name in ("", "index"):
        return "index.html"
    return name if "." in name else f"{name}.html"


def load_assets(directory: Path = PAGES_DIR) -> dict[str, Asset]:
    """Every servable file of `directory` (by its known extension), read into memory."""
    return {
        path.name: Asset(path.read_bytes(), _TYPES[path.suffix])
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in _TYPES
    }


def add_page_routes(app: web.Application, directory: Path = PAGES_DIR) -> None:
    """Serve the pages under /ui/ and send / there."""
    assets = load_assets(directory)
    etags = {name: asset.etag for name, asset in assets.items()}

    async def root(request: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX)

    async def page(request: web.Request) -> web.Response:
        name = asset_name(request.path) or ""
        asset = assets.get(name)
        if asset is None:
            raise web.HTTPNotFound(text=f"no page {request.path}; the pages are listed at {PREFIX}")
        etag = etags[name]
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag, **HEADERS})
        headers = {"Content-Type": asset.content_type, "ETag": etag, **HEADERS}
        return web.Response(body=asset.body, headers=headers)

    app.router.add_get("/", root)
    app.router.add_get(PREFIX.rstrip("/"), root)
    app.router.add_get(PREFIX + "{name:[^/]*}", page)
