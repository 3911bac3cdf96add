"""GET /dashboard and its static files, served from the package (no CDN, works offline).

The page itself needs no key: it is a login form until the master key is entered, and
every figure comes from the /admin/dashboard/* endpoints, which check the key.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".md": "text/markdown",
}
# No inline scripts or styles, nothing from elsewhere: the page may only talk to this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of dashboard/static, read once: name -> (bytes, content type)."""
    folder = resources.files("faregate.dashboard").joinpath("static")
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return assets


def add_dashboard_page(app: web.Application) -> None:
    assets = load_assets()

    async def page(request: web.Request) -> web.StreamResponse:
        body, content_type = assets["index.html"]
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    async def static(request: web.Request) -> web.StreamResponse:
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"}
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/", page)
    app.router.add_get("/dashboard/static/{name}", static)
