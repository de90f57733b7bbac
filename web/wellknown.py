"""Documents the server publishes without authentication: the dev token issuer's keys and
OIDC discovery (`/.well-known/…`), and the API's OpenAPI description (`/api/openapi.json`).

Relying parties (our own listeners on other nodes, a partner's test platform) fetch the
public keys from here, as they would from Pro Santé Connect's `…/protocol/openid-connect/certs`.
"""
from __future__ import annotations

import json
from pathlib import Path

from config import Settings

from .http import HttpError, Request, Response
from .router import Router

SIGNING_ALGORITHMS = ["RS256"]
OPENAPI = Path(__file__).with_name("openapi.json")


class WellKnown:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jwks_path = settings.path("oidc", "jwks.json")

    def register(self, router: Router) -> None:
        router.add("GET", "/.well-known/jwks.json", self.jwks)
        router.add("GET", "/.well-known/openid-configuration", self.discovery)
        router.add("GET", "/api/openapi.json", self.openapi)

    async def openapi(self, _request: Request) -> Response:
        return Response(200, OPENAPI.read_bytes(), "application/json")

    async def jwks(self, _request: Request) -> Response:
        try:
            keys = json.loads(self._jwks_path.read_text())
        except FileNotFoundError:
            raise HttpError(404, "no_issuer", "this server runs no dev token issuer (msante init creates one)")
        return Response.json(keys, headers={"cache-control": "public, max-age=300"})

    async def discovery(self, _request: Request) -> Response:
        base = self._settings.public_url
        return Response.json({
            "issuer": base,
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "authorization_endpoint": f"{base}/oidc/authorize",  # web/oidc.py: code flow with PKCE
            "token_endpoint": f"{base}/oidc/token",
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": SIGNING_ALGORITHMS,
            "acr_values_supported": ["eidas1"],
            "claims_supported": ["sub", "SubjectNameID", "given_name", "family_name", "preferred_username",
                                 "SubjectRefPro", "SubjectOrganization", "SubjectOrganizationID", "SubjectRole"],
        })
