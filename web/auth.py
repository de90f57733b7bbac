"""Bearer-token authentication for HTTP requests (RFC 6750), on the shared directory path."""
from __future__ import annotations

from directory.authn import Authenticator, AuthError, Principal

from .http import HttpError, Request


async def require_bearer(request: Request, authenticator: Authenticator) -> Principal:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError(401, "unauthorized", "a bearer token is required",
                        {"www-authenticate": 'Bearer realm="msante"'})
    try:
        return await authenticator.by_token(token.strip(), source=request.peer, protocol="https")
    except AuthError as exc:
        raise HttpError(401, "invalid_token", str(exc),
                        {"www-authenticate": f'Bearer realm="msante", error="invalid_token", '
                                             f'error_description="{exc.code}"'}) from None
