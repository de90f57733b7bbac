"""Access tokens in the shape of Pro Santé Connect: the dev issuer, and the verifier every login uses.

Mail clients log in with the PSC access token (SASL XOAUTH2/OAUTHBEARER), so whatever
accepts a token accepts a professional. `TokenVerifier` says yes only to a token signed by
a configured issuer with that issuer's own keys, for our audience, in date, at the required
assurance level (`acr`), naming a national identifier (`SubjectNameID`). Which directory
entry that identifier is, and whether it may act here, is the caller's question.

`DevIssuer` signs tokens with the same claims as PSC, so that a dev install, the demo and
the tests exercise the real verification path rather than a shortcut around it.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .files import write_private, write_public
from .jose import (JoseError, PrivateKey, check_algorithm, decode_unverified_claims, decode_unverified_header,
                   generate_signing_key, load_private_jwk, private_jwk_json, public_jwks, sign_jwt, verify_jwt)
from .pki import IDNAT

if TYPE_CHECKING:
    import ssl

    from config.settings import Issuer

log = logging.getLogger("msante.tokens")

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256")
# eIDAS assurance levels as PSC and FranceConnect name them, lowest first.
ACR_LEVELS = ("eidas1", "eidas2", "eidas3")
MAX_TOKEN_CHARS = 16 * 1024  # PSC tokens are 1-4 KB; a cap keeps base64 and JSON work bounded
JWKS_MAX_AGE = 3600  # s; a key the issuer withdraws stops being accepted within the hour
JWKS_REFETCH_INTERVAL = 60  # s; the fastest a stream of unknown kids can make us call the issuer
JWKS_FETCH_TIMEOUT = 5  # s; blocks the caller, so short
JWKS_MAX_BYTES = 256 * 1024  # a key set is a few KB
PROFESSION_OID = "1.2.250.1.71.1.2.7"  # TRE_G15 ProfessionSante, as in PSC's SubjectRole
SIGNING_KEY_FILE = "signing-key.json"
JWKS_FILE = "jwks.json"


class TokenError(Exception):
    """A token is refused. `code` is for machines and logs: malformed, bad_algorithm,
    unknown_issuer, keys_unavailable (our side: the issuer's keys could not be read),
    bad_signature, wrong_audience, expired, not_yet_valid, acr, no_identity."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class VerifiedToken:
    idnat: str  # SubjectNameID: the national identifier to look up in the directory
    subject: str  # sub: the issuer's opaque identifier of the person
    issuer: str
    claims: Mapping[str, Any]
    expires_at: datetime


class DevIssuer:
    """A local stand-in for Pro Santé Connect: one RS256 key in `<data_dir>/oidc/`, its JWKS beside it."""

    def __init__(self, key: PrivateKey, issuer_url: str, directory: Path) -> None:
        self.key = key
        self.issuer_url = issuer_url
        self.jwks_path = Path(directory) / JWKS_FILE

    @classmethod
    def create(cls, data_dir: Path, issuer_url: str) -> DevIssuer:
        """Generate the signing key and publish its JWKS; refuses to replace an existing key,
        since every token signed with it would stop verifying."""
        directory = Path(data_dir) / "oidc"
        key_path = directory / SIGNING_KEY_FILE
        if key_path.exists():
            raise FileExistsError(f"{key_path} already exists: load it, or remove it to start over")
        key = generate_signing_key(f"msante-dev-{uuid.uuid4().hex[:12]}")
        # the key last: until it exists, a failed create can simply be run again
        write_public(directory / JWKS_FILE, json.dumps(public_jwks([key]), indent=2).encode())
        write_private(key_path, private_jwk_json(key).encode())
        return cls(key, issuer_url, directory)

    @classmethod
    def load(cls, data_dir: Path, issuer_url: str) -> DevIssuer:
        directory = Path(data_dir) / "oidc"
        return cls(load_private_jwk((directory / SIGNING_KEY_FILE).read_text()), issuer_url, directory)

    def issue_access_token(self, *, idnat: str, given_name: str, family_name: str, audience: str = "msante",
                           ttl: int = 300, acr: str = "eidas1", exercices: list[dict] | None = None,
                           extra: dict | None = None) -> str:
        """A signed access token for the professional `idnat`; `extra` claims are added last."""
        claims = psc_claims(self.issuer_url, idnat=idnat, given_name=given_name, family_name=family_name,
                            audience=audience, ttl=ttl, acr=acr, exercices=exercices)
        return sign_jwt({**claims, **(extra or {})}, self.key)


def psc_claims(issuer_url: str, *, idnat: str, given_name: str, family_name: str, audience: str, ttl: int,
               acr: str, exercices: list[dict] | None) -> dict:
    """The claims of a PSC access token. `sub` is opaque and stable per issuer and person, as
    PSC's; without `exercices`, the person has one civil medical practice and no activity."""
    now = int(time.time())
    if exercices is None:
        exercices = [{"codeProfession": "10", "codeCategorieProfessionnelle": "C", "codeCiviliteDexercice": "DR",
                      "nomDexercice": family_name, "prenomDexercice": given_name, "codeTypeSavoirFaire": "",
                      "codeSavoirFaire": "", "activities": []}]
    return {
        "iss": issuer_url,
        "aud": audience,
        "azp": audience,
        "sub": str(uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, issuer_url), idnat)),
        "typ": "Bearer",
        "iat": now,
        "nbf": now,
        "auth_time": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),
        "acr": acr,
        "scope": "openid scope_all",
        "SubjectNameID": idnat,
        "preferred_username": idnat,
        "given_name": given_name,
        "family_name": family_name,
        "SubjectRole": [f"{e.get('codeProfession', '')}^{PROFESSION_OID}" for e in exercices],
        "SubjectRefPro": {"exercices": exercices},
    }


class TokenVerifier:
    """Verifies access tokens from the configured issuers (see the module docstring).

    Issuers are told apart by the (unverified) `iss`, and a token is then checked with that
    issuer's keys only, so one issuer can never vouch for another's users. `clock` is for tests.
    """

    def __init__(self, issuers: Iterable[Issuer], leeway: int, *, algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
                 jwks_tls: ssl.SSLContext | None = None, clock: Callable[[], float] = time.time) -> None:
        self._algorithms = list(algorithms)
        for alg in self._algorithms:
            try:
                check_algorithm(alg, self._algorithms)
            except JoseError as exc:
                raise ValueError(str(exc)) from None
        self._leeway = leeway
        self._clock = clock
        self._issuers: dict[str, tuple[Issuer, _FileKeys | _UrlKeys]] = {}
        for issuer in issuers:
            if issuer.issuer in self._issuers:
                raise ValueError(f"issuer {issuer.issuer} is configured twice")
            if bool(issuer.jwks_file) == bool(issuer.jwks_url):
                raise ValueError(f"issuer {issuer.issuer} needs exactly one of jwks_file or jwks_url")
            keys = _FileKeys(Path(issuer.jwks_file)) if issuer.jwks_file else _UrlKeys(issuer.jwks_url, jwks_tls, clock)
            self._issuers[issuer.issuer] = (issuer, keys)

    def verify(self, token: str) -> VerifiedToken:
        """Return the verified token, or raise `TokenError`. May block up to JWKS_FETCH_TIMEOUT
        when an issuer configured by URL needs its keys fetched (at most once a minute)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("not a token, or longer than any access token", "malformed")
        try:
            header, unverified = decode_unverified_header(token), decode_unverified_claims(token)
        except JoseError as exc:
            raise TokenError(str(exc), "malformed") from None
        try:
            check_algorithm(header.get("alg"), self._algorithms)
        except JoseError as exc:
            raise TokenError(str(exc), "bad_algorithm") from None
        issuer_name = unverified.get("iss")
        entry = self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if entry is None:
            raise TokenError(f"issuer {issuer_name!r} is not trusted here", "unknown_issuer")
        issuer, keys = entry
        try:
            claims = verify_jwt(token, keys.jwks(header.get("kid")), algorithms=self._algorithms)
        except JoseError as exc:
            raise TokenError(str(exc), "bad_signature") from None
        return self._checked(issuer, claims)

    def _checked(self, issuer: Issuer, claims: dict) -> VerifiedToken:
        now, leeway = self._clock(), self._leeway
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if issuer.audience not in audiences:
            raise TokenError(f"token is for {audience!r}, not {issuer.audience!r}", "wrong_audience")
        expiry = claims.get("exp")
        if not _is_time(expiry):
            raise TokenError("token has no expiry time (exp)", "malformed")
        if now > expiry + leeway:
            raise TokenError(f"token expired {int(now - expiry)} s ago", "expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and not _is_time(value):
                raise TokenError(f"{name} is not a time", "malformed")
            if value is not None and value > now + leeway:
                raise TokenError(f"token not valid for another {int(value - now)} s ({name})", "not_yet_valid")
        if issuer.acr and not _acr_satisfies(claims.get("acr"), issuer.acr):
            raise TokenError(f"authentication level {claims.get('acr')!r} is below {issuer.acr!r}", "acr")
        idnat, subject = claims.get("SubjectNameID"), claims.get("sub")
        if not isinstance(idnat, str) or not IDNAT.fullmatch(idnat):
            raise TokenError(f"token names no national identifier (SubjectNameID {idnat!r})", "no_identity")
        if not isinstance(subject, str) or not subject:
            raise TokenError("token has no subject (sub)", "malformed")
        return VerifiedToken(idnat, subject, issuer.issuer, MappingProxyType(claims),
                             datetime.fromtimestamp(expiry, timezone.utc))


class _FileKeys:
    """A JWKS file, re-read when it changes: an atomic replace gives a new inode, an edit a new mtime."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._loaded: tuple[tuple[int, int, int], dict] | None = None

    def jwks(self, kid: Any) -> dict:  # the file is the truth whatever the kid: it is read when it changes
        try:
            stat = self._path.stat()
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if self._loaded is None or self._loaded[0] != stamp:
                self._loaded = (stamp, _parse_jwks(self._path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise TokenError(f"the issuer's keys cannot be read from {self._path}: {exc}", "keys_unavailable") from None
        return self._loaded[1]


class _UrlKeys:
    """A JWKS fetched over HTTPS and cached.

    Fetched again when older than JWKS_MAX_AGE or when a token names a kid it lacks (the
    issuer rotated), never more than once per JWKS_REFETCH_INTERVAL. If a fetch fails, the
    keys already known stay in use: an issuer's brief outage must not log everyone out.
    """

    def __init__(self, url: str, tls: ssl.SSLContext | None, clock: Callable[[], float]) -> None:
        if urlsplit(url).scheme != "https":
            raise ValueError(f"jwks_url must be https (keys fetched in clear could be anyone's): {url}")
        # redirects refused: the configured URL is the one trusted, and a redirect could leave https
        handlers = [urllib.request.HTTPSHandler(context=tls), _NoRedirect()]
        self._opener = urllib.request.build_opener(*handlers)
        self._url = url
        self._clock = clock
        self._lock = threading.Lock()  # verify() may run in several threads; one fetch at a time
        self._jwks: dict | None = None
        self._fetched_at = self._attempted_at = -math.inf

    def jwks(self, kid: Any) -> dict:
        with self._lock:
            now = self._clock()
            wanted = (self._jwks is None or now - self._fetched_at > JWKS_MAX_AGE
                      or not any(k.get("kid") == kid for k in self._jwks["keys"] if isinstance(k, dict)))
            if wanted and now - self._attempted_at >= JWKS_REFETCH_INTERVAL:
                self._attempted_at = now
                try:
                    self._jwks, self._fetched_at = self._fetch(), now
                except (OSError, ValueError) as exc:
                    log.warning("fetching %s failed: %s", self._url, exc)
            if self._jwks is None:
                raise TokenError(f"the issuer's keys could not be fetched from {self._url}", "keys_unavailable")
            return self._jwks

    def _fetch(self) -> dict:
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        with self._opener.open(request, timeout=JWKS_FETCH_TIMEOUT) as response:
            body = response.read(JWKS_MAX_BYTES + 1)
        if len(body) > JWKS_MAX_BYTES:
            raise ValueError(f"key set larger than {JWKS_MAX_BYTES} bytes")
        return _parse_jwks(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx


def _parse_jwks(body: bytes) -> dict:
    jwks = json.loads(body)
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set (an object with a list of keys)")
    return jwks


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _acr_satisfies(acr: Any, required: str) -> bool:
    if acr == required:
        return True
    return acr in ACR_LEVELS and required in ACR_LEVELS and ACR_LEVELS.index(acr) > ACR_LEVELS.index(required)
