"""Sign-in at the dev token issuer: the OpenID Connect authorization code flow with PKCE, the
way Pro Santé Connect runs it, so that the web client signs in here exactly as it would there.

- `GET /oidc/authorize` checks the request (registered client and redirect URI, `code`
  response type, an S256 code challenge: RFC 7636 §4.2; `plain` is refused) and shows a page
  to choose one of the demo professionals (the CPS card or e-CPS step of the real thing).
- `POST /oidc/authorize` issues a one-time code, bound to the client, redirect URI, challenge
  and person, valid CODE_TTL seconds, and redirects back with it (and `iss`, RFC 9207).
- `POST /oidc/token` exchanges the code for an access token signed by the DevIssuer (the
  verifier must hash to the challenge), an ID token and a refresh token; `refresh_token`
  grants rotate the refresh token.

Anyone who reaches the page picks whom to be, the demo's admin included: the page is served
only when `[auth] dev_sign_in` is on (`msante init --demo` turns it on, plain `init` does not),
while the dev issuer is one the server trusts, and to loopback clients only (403 otherwise,
audited). Behind a reverse proxy on the same host every client looks local: never turn it on
there. Startup logs a warning while it is on. Only the demo's fictional professionals can be
chosen. Codes and refresh tokens live in memory: a restart signs everyone out, as a dev
issuer may.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from certs.tokens import DevIssuer
from config import Settings
from msante import demo
from store.audit import ANONYMOUS, Actor, AuditTrail
from store.schema import professionals

from .http import HttpError, Request, Response
from .router import Router

log = logging.getLogger("msante.oidc")
CLIENT_ID = "msante-web"  # the web client served at /, the one client registered here
CODE_TTL = 60  # s; the client exchanges the code as soon as the browser comes back
ACCESS_TTL = 300  # s; PSC access tokens live a few minutes, the client refreshes them
REFRESH_TTL = 8 * 3600  # s; a working shift
MAX_GRANTS = 10_000  # codes and refresh tokens held at once
VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")  # base64url(SHA-256), unpadded
MAX_STATE_CHARS = 512
PAGE_CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"


@dataclass(frozen=True)
class _Grant:
    idnat: str
    expires: float
    redirect_uri: str = ""
    challenge: str = ""
    nonce: str = ""


class OAuthError(Exception):
    """An error answered as RFC 6749 §5.2 says: 400 with {"error", "error_description"}."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


class DevSignIn:
    def __init__(self, settings: Settings, engine: AsyncEngine, audit: AuditTrail) -> None:
        self._engine = engine
        self._audit = audit
        self._issuer_url = settings.public_url
        self._redirect_uri = f"{settings.public_url}/"
        trusted = [i for i in settings.issuers if i.issuer == settings.public_url]
        key_exists = settings.path("oidc", "signing-key.json").exists()
        enabled = settings.dev_sign_in and trusted and key_exists
        self._issuer = DevIssuer.load(settings.data_dir, settings.public_url) if enabled else None
        if enabled:
            log.warning("DEV SIGN-IN IS ON ([auth] dev_sign_in): any client on this host can get a token for any "
                        "demo professional, the admin included, at %s/oidc/authorize. Demos only.", self._issuer_url)
        self._audience = trusted[0].audience if trusted else ""
        self._acr = (trusted[0].acr if trusted else "") or "eidas1"
        self._codes: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}

    def register(self, router: Router) -> None:
        router.add("GET", "/oidc/authorize", self.chooser)
        router.add("POST", "/oidc/authorize", self.authorize)
        router.add("POST", "/oidc/token", self.token)

    async def chooser(self, request: Request) -> Response:
        await self._local_only(request, "oidc.authorize")
        params = self._authorization_request({k: v[-1] for k, v in request.query.items()})
        if isinstance(params, Response):
            return params
        people = await self._demo_people()
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())
        choices = "".join(
            f'<li><form method="post" action="/oidc/authorize">{hidden}'
            f'<button name="idnat" value="{html.escape(p["idnat"])}">{html.escape(p["name"])}'
            f'<small>{html.escape(p["profession"])} · RPPS {html.escape(p["idnat"][1:])}</small></button></form></li>'
            for p in people) or "<li>Aucun professionnel de démonstration dans l'annuaire.</li>"
        page = f"""<!doctype html><html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Connexion — msante (démonstration)</title>
<link rel="stylesheet" href="/static/app.css"></head><body class="signin"><main>
<h1>Connexion de démonstration</h1>
<p>Émetteur de jetons de développement : choisissez un professionnel fictif (en production, la connexion passe
par Pro Santé Connect avec la carte CPS ou l'application e-CPS).</p>
<ul class="people">{choices}</ul></main></body></html>"""
        return Response(200, page.encode(), "text/html; charset=utf-8", {"content-security-policy": PAGE_CSP})

    async def authorize(self, request: Request) -> Response:
        await self._local_only(request, "oidc.authorize")
        form = _form(request)
        params = self._authorization_request(form)
        if isinstance(params, Response):
            return params
        idnat = form.get("idnat", "")
        if idnat not in {p["idnat"] for p in await self._demo_people()}:
            raise HttpError(400, "invalid_request", "choose one of the demo professionals")
        self._keep(self._codes, code := secrets.token_urlsafe(32), _Grant(
            idnat, time.time() + CODE_TTL, params["redirect_uri"], params["code_challenge"], params.get("nonce", "")))
        answer = {"code": code, "iss": self._issuer_url, **({"state": params["state"]} if "state" in params else {})}
        return Response(303, headers={"location": f"{params['redirect_uri']}?{urlencode(answer)}"})

    async def token(self, request: Request) -> Response:
        await self._local_only(request, "oidc.token")
        try:
            form = _form(request)
            if self._issuer is None:
                raise OAuthError("invalid_client", "this server runs no trusted dev token issuer")
            if form.get("client_id") != CLIENT_ID:
                raise OAuthError("invalid_client", "unknown client_id")
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                grant = self._redeem_code(form)
            elif grant_type == "refresh_token":
                grant = self._refresh.pop(form.get("refresh_token", ""), None)
                if grant is None or grant.expires < time.time():
                    raise OAuthError("invalid_grant", "unknown or expired refresh token")
            else:
                raise OAuthError("unsupported_grant_type", "authorization_code or refresh_token")
            return await self._tokens(grant, grant_type, request.peer)
        except OAuthError as exc:
            return Response.json({"error": exc.error, "error_description": exc.description}, 400)

    async def _local_only(self, request: Request, action: str) -> None:
        """No sign-in for a client on another host (once the issuer runs at all: 404 otherwise)."""
        if self._issuer is None or _loopback(request.peer):
            return
        await self._audit.record(ANONYMOUS, action, outcome="denied", source=request.peer, reason="not loopback")
        raise HttpError(403, "forbidden", "the dev sign-in serves clients on this host only")

    # --- the steps --------------------------------------------------------------------------------

    def _authorization_request(self, params: dict[str, str]) -> dict[str, str] | Response:
        """The checked parameters to carry through the chooser, or the redirect that reports
        what is wrong with them. A bad client or redirect URI is answered here instead (RFC 6749
        §4.1.2.1 forbids redirecting to it)."""
        if self._issuer is None:
            raise HttpError(404, "no_issuer", "this server runs no trusted dev token issuer")
        if params.get("client_id") != CLIENT_ID or params.get("redirect_uri") != self._redirect_uri:
            raise HttpError(400, "invalid_client",
                            f"client_id must be {CLIENT_ID} and redirect_uri {self._redirect_uri}")
        problem = None
        if params.get("response_type") != "code":
            problem = ("unsupported_response_type", "response_type must be code")
        elif params.get("code_challenge_method") != "S256" or not CHALLENGE.fullmatch(params.get("code_challenge", "")):
            problem = ("invalid_request", "PKCE is required: code_challenge_method=S256 and its code_challenge")
        elif len(params.get("state", "")) > MAX_STATE_CHARS or len(params.get("nonce", "")) > MAX_STATE_CHARS:
            problem = ("invalid_request", f"state and nonce are limited to {MAX_STATE_CHARS} characters")
        if problem:
            answer = {"error": problem[0], "error_description": problem[1], "iss": self._issuer_url}
            if params.get("state") and len(params["state"]) <= MAX_STATE_CHARS:
                answer["state"] = params["state"]
            return Response(303, headers={"location": f"{self._redirect_uri}?{urlencode(answer)}"})
        keep = ("client_id", "redirect_uri", "response_type", "code_challenge", "code_challenge_method", "state",
                "nonce", "scope")
        return {k: params[k] for k in keep if params.get(k)}

    def _redeem_code(self, form: dict[str, str]) -> _Grant:
        grant = self._codes.pop(form.get("code", ""), None)  # one use, whatever happens next
        if grant is None or grant.expires < time.time():
            raise OAuthError("invalid_grant", "unknown, used or expired code")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = form.get("code_verifier", "")
        if not VERIFIER.fullmatch(verifier):
            raise OAuthError("invalid_request", "code_verifier must be 43 to 128 unreserved characters")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not hmac.compare_digest(digest, grant.challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return grant

    async def _tokens(self, grant: _Grant, grant_type: str, peer: str) -> Response:
        assert self._issuer is not None
        async with self._engine.connect() as conn:
            person = (await conn.execute(select(professionals).where(
                professionals.c.idnat == grant.idnat, professionals.c.retired_at.is_(None)))).first()
        if person is None:
            raise OAuthError("invalid_grant", "this professional is no longer in the directory")
        exercices = [{"codeProfession": person.profession_code, "codeCategorieProfessionnelle": "C",
                      "codeSavoirFaire": person.specialty_code, "nomDexercice": person.family_name,
                      "prenomDexercice": person.given_name, "activities": []}]
        names = {"idnat": person.idnat, "given_name": person.given_name, "family_name": person.family_name}
        access = self._issuer.issue_access_token(**names, audience=self._audience, ttl=ACCESS_TTL, acr=self._acr,
                                                 exercices=exercices)
        id_token = self._issuer.issue_access_token(**names, audience=CLIENT_ID, ttl=ACCESS_TTL, acr=self._acr,
                                                   exercices=exercices,
                                                   extra={"nonce": grant.nonce} if grant.nonce else None)
        self._keep(self._refresh, refresh := secrets.token_urlsafe(32),
                   _Grant(grant.idnat, time.time() + REFRESH_TTL))
        await self._audit.record(Actor(grant.idnat, "person"), "oidc.token", source=peer, grant_type=grant_type,
                                 client=CLIENT_ID)
        return Response.json({"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_TTL,
                              "refresh_token": refresh, "id_token": id_token, "scope": "openid"},
                             headers={"pragma": "no-cache"})

    def _keep(self, grants: dict[str, _Grant], key: str, grant: _Grant) -> None:
        if len(grants) >= MAX_GRANTS:
            now = time.time()
            for stale in [k for k, g in grants.items() if g.expires < now]:
                del grants[stale]
            if len(grants) >= MAX_GRANTS:
                raise HttpError(503, "busy", "too many sign-ins in progress; try again shortly")
        grants[key] = grant

    async def _demo_people(self) -> list[dict[str, str]]:
        idnats = ["8" + person[0] for person in demo.PEOPLE]
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(professionals).where(
                professionals.c.idnat.in_(idnats), professionals.c.retired_at.is_(None))
                .order_by(professionals.c.family_name))
            return [{"idnat": r.idnat, "name": f"{r.given_name.title()} {r.family_name}",
                     "profession": " – ".join(x for x in (r.profession_label, r.specialty_label) if x)} for r in rows]


def _loopback(peer: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped address (a dual-stack listener's "::ffff:127.0.0.1")."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HttpError(415, "unsupported_media_type", "send application/x-www-form-urlencoded")
    try:
        fields = parse_qs(request.body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "invalid_request", "the form is not valid") from None
    return {k: v[-1] for k, v in fields.items()}
