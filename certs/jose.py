"""JOSE (JWS, JWE, JWK) behind a few functions: the only module that imports joserfc.

JOSE libraries come and go (python-jose was abandoned with open CVEs), so the rest of the
code sees our own `PrivateKey`, plain dicts for key sets and claims, and one `JoseError`.
The rules that make token verification safe are written here, not left to the library's
defaults: the algorithm must be on the caller's allow-list, `none` and HMAC are refused
whatever the list says (an HMAC "signed" with a public key is the classic key-confusion
forgery), the key is found by `kid`, and must be meant for signatures and for that alg.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwe, jwt
from joserfc.errors import JoseError as _LibraryError
from joserfc.jwk import RSAKey, import_key

SIGNING_KEY_BITS = 2048  # what Pro Santé Connect uses for RS256
# PSC encrypts to RSA keys; RSA1_5 (Bleichenbacher) and compression (decompression bombs) stay out.
JWE_ALGORITHMS = ("RSA-OAEP", "RSA-OAEP-256", "A128GCM", "A256GCM", "A128CBC-HS256", "A256CBC-HS512")


class JoseError(Exception):
    """A token, key or key set is refused; the message says why."""


@dataclass(frozen=True)
class PrivateKey:
    """A private JWK: `kid` and `alg` are for callers, the library object stays inside this module."""

    kid: str
    alg: str
    _jwk: Any = field(repr=False, compare=False)


def generate_signing_key(kid: str) -> PrivateKey:
    """A new RSA key for RS256 signatures, published under `kid`."""
    key = RSAKey.generate_key(SIGNING_KEY_BITS, parameters={"kid": kid, "alg": "RS256", "use": "sig"})
    return PrivateKey(kid, "RS256", key)


def private_jwk_json(key: PrivateKey) -> str:
    """The private key as JWK JSON, for a file only its owner may read."""
    return json.dumps(key._jwk.as_dict(private=True), indent=2)


def load_private_jwk(text: str) -> PrivateKey:
    """Read a private JWK (as written by `private_jwk_json`); it must carry a `kid`."""
    try:
        data = json.loads(text)
        key = import_key(data) if isinstance(data, dict) else None
    except (ValueError, TypeError, _LibraryError) as exc:
        raise JoseError(f"not a JWK: {exc}") from None
    if key is None or not key.is_private or not isinstance(data.get("kid"), str):
        raise JoseError("a private JWK with a kid is expected")
    return PrivateKey(data["kid"], data.get("alg", ""), key)


def public_jwks(keys: Iterable[PrivateKey]) -> dict:
    """The public half of `keys` as a JWK Set, as published at an issuer's jwks_uri."""
    return {"keys": [key._jwk.as_dict(private=False) for key in keys]}


def sign_jwt(claims: dict, key: PrivateKey, alg: str = "RS256") -> str:
    """Sign `claims` as a compact JWT whose header names the key (`kid`) and the type (JWT)."""
    check_algorithm(alg, [alg])
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    try:
        return jwt.encode(header, claims, key._jwk, algorithms=[alg])
    except _LibraryError as exc:
        raise JoseError(f"cannot sign with {alg}: {exc}") from None


def decode_unverified_header(token: str) -> dict:
    """The JOSE header of a compact JWS or JWE, NOT verified: only to pick keys and refuse early."""
    return _segment(token, 0, (3, 5))


def decode_unverified_claims(token: str) -> dict:
    """The claims of a compact JWS, NOT verified: only to find which issuer's keys to verify with."""
    return _segment(token, 1, (3,))


def check_algorithm(alg: Any, algorithms: Collection[str]) -> None:
    """Refuse `alg` unless it is an allowed asymmetric signature algorithm."""
    if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
        raise JoseError(f"algorithm {alg!r} is never accepted (unsigned or symmetric)")
    if alg not in algorithms:
        raise JoseError(f"algorithm {alg!r} is not among the allowed {', '.join(algorithms)}")


def verify_jwt(token: str, jwks: dict, *, algorithms: list[str]) -> dict:
    """Verify a compact JWS with the key of `jwks` whose kid the header names; return its claims.

    The claims' meaning (issuer, audience, dates) is the caller's to check.
    """
    header = decode_unverified_header(token)
    alg = header.get("alg")
    check_algorithm(alg, algorithms)
    key = _key_for(jwks, header.get("kid"), alg)
    try:
        return jwt.decode(token, key, algorithms=[alg]).claims
    except (_LibraryError, ValueError) as exc:
        raise JoseError(f"signature does not verify: {exc.__class__.__name__} {exc}".strip()) from None


def decrypt_jwe(token: str, private_key: PrivateKey) -> bytes:
    """Decrypt a compact JWE addressed to `private_key` (PSC may encrypt its userinfo answer)."""
    try:
        return jwe.decrypt_compact(token, private_key._jwk, algorithms=JWE_ALGORITHMS).plaintext or b""
    except (_LibraryError, ValueError) as exc:
        raise JoseError(f"cannot decrypt: {exc.__class__.__name__} {exc}".strip()) from None


def _key_for(jwks: dict, kid: Any, alg: str) -> Any:
    if not isinstance(kid, str):
        raise JoseError("the token names no key (kid)")
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    found = [k for k in entries or [] if isinstance(k, dict) and k.get("kid") == kid]
    if len(found) != 1:
        raise JoseError(f"the issuer publishes {'no' if not found else 'several'} key(s) with kid {kid!r}")
    entry = found[0]
    if entry.get("use", "sig") != "sig" or entry.get("alg", alg) != alg or entry.get("kty") == "oct":
        raise JoseError(f"key {kid!r} is not meant for {alg} signatures")
    try:
        return import_key(entry)
    except (_LibraryError, ValueError, TypeError) as exc:
        raise JoseError(f"key {kid!r} cannot be read: {exc}") from None


def _segment(token: str, index: int, part_counts: tuple[int, ...]) -> dict:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) not in part_counts:
        raise JoseError(f"not a compact {'JWS' if part_counts == (3,) else 'JWS or JWE'} (dot-separated parts)")
    try:
        raw = base64.b64decode(parts[index] + "=" * (-len(parts[index]) % 4), altchars=b"-_", validate=True)
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise JoseError(f"part {index + 1} is not base64url JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JoseError(f"part {index + 1} is not a JSON object")
    return value
