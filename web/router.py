"""Routes `METHOD /path/{param}` to handlers; answers 404 and 405 (with Allow) itself."""
from __future__ import annotations

import re

from .http import Handler, HttpError, Request, Response


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], str, str, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}"))
        self._routes.append((re.compile(f"^{regex}$"), method.upper(), pattern, handler))

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
