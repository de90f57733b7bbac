"""Serves the web client (`web/static/`: plain HTML, CSS and JavaScript, no build step) at `/`.

Only the files listed here are served, read once. The content security policy allows this
origin's scripts, styles and connections (the API and the websocket) and nothing else: no
inline script, no third party, no framing.
"""
from __future__ import annotations

from pathlib import Path

import web
from web.http import HttpError, Request, Response
from web.router import Router

STATIC = Path(web.__file__).with_name("static")
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "indicators.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# blob: images: thumbnails of a circle's PNG and JPEG attachments, fetched with the bearer token
# (an <img> cannot send it) and shown from the bytes the script holds.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class WebClient:
    def __init__(self, directory: Path = STATIC) -> None:
        self._files = {name: (directory / name).read_bytes() for name in FILES}

    def register(self, router: Router) -> None:
        router.add("GET", "/", self.index)
        router.add("GET", "/static/{name}", self.static)

    async def index(self, _request: Request) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        name = request.params["name"]
        if name not in FILES or name == "index.html":
            raise HttpError(404, "not_found", f"no resource at {request.path}")
        return self._file(name)

    def _file(self, name: str) -> Response:
        return Response(200, self._files[name], FILES[name], {"content-security-policy": CSP})
