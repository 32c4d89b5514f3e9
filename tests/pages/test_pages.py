"""The pages are served safely, reference only files that exist, and show the API's errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.pages import PAGES_DIR, add_page_routes, asset_name, load_assets
from tests.pages.browser import chromium

PAGES = ("index.html", "agent.html", "call.html", "supervisor.html")


def test_paths_name_one_plain_file() -> None:
    assert asset_name("/ui/") == "index.html"
    assert asset_name("/ui/agent") == "agent.html"
    assert asset_name("/ui/app.css") == "app.css"
    assert asset_name("/ui/.hidden") is None
    assert asset_name("/ui/a/b.js") is None
    assert asset_name("/other") is None


def test_pages_reference_only_files_that_ship() -> None:
    assets = load_assets()
    for page in PAGES:
        html = assets[page].body.decode()
        assert "<script>" not in html, f"{page}: inline script"
        assert "style=" not in html, f"{page}: inline style"
        for ref in re.findall(r'(?:src|href)="([^"#:]+)"', html):
            assert asset_name(f"/ui/{ref}") in assets or ref == "./", f"{page} -> {ref}"
    for module in (p for p in assets if p.endswith(".js")):
        for ref in re.findall(r'from "\./([^"]+)"', assets[module].body.decode()):
            assert ref in assets, f"{module} imports {ref}"


@pytest.fixture
async def pages() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The page routes plus a stand-in /login that refuses every password, as a node does."""

    async def login(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "login_failed", "message": "unknown user or wrong password"}, status=401
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": "n-test"})

    app = web.Application()
    add_page_routes(app)
    app.router.add_post("/login", login)
    app.router.add_get("/healthz", healthz)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_pages_are_served_with_a_strict_policy(
    pages: TestClient[web.Request, web.Application],
) -> None:
    response = await pages.get("/", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (302, "/ui/")
    for path, kind in (("/ui/agent", "text/html"), ("/ui/agent.js", "text/javascript")):
        response = await pages.get(path)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(kind)
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    etag = response.headers["ETag"]
    again = await pages.get("/ui/agent.js", headers={"If-None-Match": etag})
    assert (again.status, await again.read()) == (304, b"")
    for missing in ("/ui/nope", "/ui/..%2Fpages.py", "/ui/.hidden"):
        assert (await pages.get(missing)).status == 404, missing


async def test_a_bad_login_shows_the_nodes_error(
    pages: TestClient[web.Request, web.Application], tmp_path: Path
) -> None:
    base = str(pages.make_url("/ui/"))
    async with chromium(tmp_path, "agent") as page:
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        await page.goto(base + "agent")
        await page.get_by_label("Agent ID").fill("ann")
        await page.get_by_label("Password").fill("wrong")
        await page.get_by_role("button", name="Sign in").click()
        alert = page.locator("#signin-error")
        await alert.wait_for(state="visible")
        assert await alert.inner_text() == "unknown user or wrong password (login_failed)"
        assert await page.locator("#desk").is_hidden()
        await page.goto(base + "supervisor")
        await page.get_by_label("User").fill("sue")
        await page.get_by_role("button", name="Sign in").click()
        await page.locator("#signin-error").wait_for(state="visible")
        assert "login_failed" in await page.locator("#signin-error").inner_text()
        assert [p for p in problems if "401" not in p] == []  # no script error on any page


def test_pages_dir_holds_what_pyproject_ships() -> None:
    shipped = {".html", ".css", ".js", ".svg"}
    assert {p.suffix for p in PAGES_DIR.iterdir() if p.is_file()} <= shipped
