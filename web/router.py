"""Routes `METHOD /path/{param}` to handlers; answers 404 and 405 (with Allow) itself, and
tells the HTTP layer how large a body a route takes before that body is read."""
from __future__ import annotations

import re

from .http import Handler, HttpError, Request, Response


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], str, str, Handler]] = []
        self._body_limits: list[tuple[re.Pattern[str], str, int]] = []

    def add(self, method: str, pattern: str, handler: Handler, *, max_body: int | None = None) -> None:
        """`max_body`: the largest body this route takes, when it is not the listener's default
        (an upload); the HTTP layer answers 413 beyond it without reading on."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)",
                                        re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}")) + "$")
        self._routes.append((regex, method.upper(), pattern, handler))
        if max_body is not None:
            self._body_limits.append((regex, method.upper(), max_body))

    def body_limit(self, method: str, path: str) -> int | None:
        """The route's own body limit, or None for the listener's default."""
        return next((limit for regex, m, limit in self._body_limits if m == method and regex.match(path)), None)

    def route_of(self, request: Request) -> str:
        """The pattern that matches the request (a metrics label that cannot explode)."""
        for regex, _method, pattern, _handler in self._routes:
            if regex.match(request.path):
                return pattern
        return "unmatched"

    async def __call__(self, request: Request) -> Response:
        allowed = []
        for regex, method, _pattern, handler in self._routes:
            match = regex.match(request.path)
            if not match:
                continue
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                request.params = match.groupdict()
                return await handler(request)
            allowed.append(method)
        if allowed:
            raise HttpError(405, "method_not_allowed", f"{request.method} is not allowed here",
                            {"allow": ", ".join(sorted(set(allowed)))})
        raise HttpError(404, "not_found", f"no resource at {request.path}")
