"""The status page at ``/``: models, their training reports, a box to classify texts, live figures.

Static files (HTML, CSS and JavaScript in ``status-page/``, no build step, nothing from a CDN) and
three JSON reads the page makes besides the /v1 API:

    GET /ui/api/models/{model}/versions/{version}/report        the version's report.json
    GET /ui/api/models/{model}/versions/{version}/figures/{name}  one of its report figures (PNG)
    GET /ui/api/stats                                           the server's metrics, per model

The static shell holds no data and is open; everything it shows comes through these reads and
the /v1 API, which take the bearer token like every other call (the page asks for it on a 401
and keeps it for the browser tab). The page writes every label and text with ``textContent``,
never as HTML.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tlserve.server.core import stats
from tlserve.server.core.dataplane import DataPlane
from tlserve.server.frontends.http.json_bodies import json_response

PAGE = Path(__file__).parent / "status-page"
_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
_FILES = ("index.html", "page.css", "page.js")
# The static shell: no data in it, so it is open like the health paths; its reads need the token.
STATIC_PATHS = frozenset({"/", "/favicon.ico", *(f"/ui/{name}" for name in _FILES)})
_ICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
         b'fill="#2d6a4f"/><text x="8" y="12" font-size="10" text-anchor="middle" fill="#fff">t</text></svg>')


class StatusPage:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.files = {name: (PAGE / name).read_bytes() for name in _FILES}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/favicon.ico", self.favicon),
            web.get("/ui/{name}", self.static),
            web.get("/ui/api/models/{model}/versions/{version}/report", self.report),
            web.get("/ui/api/models/{model}/versions/{version}/figures/{name}", self.figure),
            web.get("/ui/api/stats", self.stats),
        ]

    def _file(self, name: str) -> web.Response:
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type=_TYPES[Path(name).suffix], charset="utf-8",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                                     # Scripts and styles from this server only, no inline script; never
                                     # inside another site's frame (clickjacking on the classify box).
                                     "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                                                "frame-ancestors 'none'",
                                     "X-Frame-Options": "DENY"})

    async def favicon(self, request: web.Request) -> web.Response:
        """A small icon (browsers ask for it; a 404 in every page load's log helps nobody)."""
        return web.Response(body=_ICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    async def index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    async def report(self, request: web.Request) -> web.Response:
        return json_response(self.plane.report(request.match_info["model"], request.match_info["version"]))

    async def figure(self, request: web.Request) -> web.FileResponse:
        path = self.plane.figure(request.match_info["model"], request.match_info["version"], request.match_info["name"])
        return web.FileResponse(path, headers={"Content-Type": "image/png"})

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(stats.snapshot())
