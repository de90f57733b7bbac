"""SASL, server side (RFC 4422), shared by SMTP AUTH (RFC 4954) and IMAP AUTHENTICATE.

Both front-ends must parse clients identically, so the mechanisms live here, sans I/O:
bytes in, bytes out. The front-end owns the framing (334 and "+ " lines, base64, the "*"
abort line, SASL-IR's "=") and the verification of what comes out (token signature and
claims, password, certificate mapping). A front-end drives one exchange like this::

    exchange = sasl.start(mechanism, initial)            # initial: None when not sent
    result = exchange.step()
    while isinstance(result, sasl.Challenge):
        result = exchange.step(read_response())           # b"*" when the client aborts
    if not verified(result):                              # result: a Credentials
        challenge = exchange.fail("token expired")
        if challenge is not None:                         # XOAUTH2, OAUTHBEARER
            send(challenge)
            exchange.step(read_response())                # -> Failed
        reply_failure()

Mechanisms: OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's format) carry the Pro Santé
Connect access token of the LPS interface; EXTERNAL (RFC 4422 Appendix A) serves
applicative boxes authenticated by their IGC-Santé certificate; PLAIN (RFC 4616) and
LOGIN (draft-murchison-sasl-login) remain for operators still using passwords.

Every client response may carry a secret, so no error message or repr() here contains
client data.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import ClassVar, Generator

# Largest client response, after base64 decoding. PSC access tokens are JWTs of a few KB
# (SubjectRefPro lists every activity of the professional); 16 KiB leaves room for the
# largest while bounding what one unauthenticated client makes us hold.
MAX_RESPONSE = 16 * 1024

# RFC 4616 §2: authzid, authcid and passwd are each at most 255 octets.
PLAIN_FIELD_MAX = 255

# Scope announced in the OAuth error challenges (RFC 7628 §3.2.2): PSC tokens are OpenID.
DEFAULT_SCOPE = "openid"

ABORT = b"*"  # RFC 4954 §4, RFC 9051 §6.2.2: the client cancels the exchange
KVSEP = b"\x01"  # RFC 7628 §3.1

_KEY = re.compile(r"[A-Za-z]+")  # RFC 7628 §3.1: key = 1*(ALPHA)
_VALUE = re.compile(r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*")  # VCHAR / SP / HTAB / CR / LF
# RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme is case-insensitive (RFC 9110 §11.1).
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9._~+/-]+=*)")
_SASLNAME = re.compile(r"(?:[^\x00,=]|=2C|=3D)+")  # RFC 5801 §4
_PORT = re.compile(r"[0-9]{1,5}")


class SaslError(Exception):
    """The exchange cannot go on. `kind` lets the front-end pick its reply (RFC 4954 §4):

    - "unknown-mechanism": 504 5.5.4 / IMAP NO
    - "malformed": 501 5.5.2 (also bad base64) / IMAP BAD
    - "aborted": 501 5.7.0 / IMAP BAD
    - "too-long": 500 5.5.6 / IMAP BAD
    """

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Challenge:
    """Bytes to send to the client; the front-end base64-encodes them."""

    data: bytes


@dataclass(frozen=True)
class Failed:
    """A failed exchange has ended; `reason` is what the front-end gave to fail()."""

    reason: str


@dataclass(frozen=True)
class BearerCredentials:
    """An OAuth 2.0 bearer token (XOAUTH2, OAUTHBEARER), not yet verified.

    `user` is XOAUTH2's user or OAUTHBEARER's authzid; host and port are what the client
    says it connected to (RFC 7628 §3.1), worth checking against the listener.
    """

    mechanism: str
    user: str | None
    token: str = field(repr=False)
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class PasswordCredentials:
    """A user name and password (PLAIN, LOGIN), not yet verified."""

    mechanism: str
    authzid: str | None
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ExternalCredentials:
    """EXTERNAL: the identity is the TLS client certificate; the client may only ask to
    act as `authzid` (RFC 4422 Appendix A), which the front-end must then authorise."""

    authzid: str | None
    mechanism: ClassVar[str] = "EXTERNAL"


Credentials = BearerCredentials | PasswordCredentials | ExternalCredentials

_Steps = Generator[bytes, bytes, Credentials]


def mechanisms(tls: bool, client_cert: bool) -> list[str]:
    """The mechanisms to advertise, strongest first.

    None before TLS: each of them sends a reusable secret (RFC 4616 §6 for passwords,
    RFC 6750 §5.3 for bearer tokens).
    EXTERNAL only when the TLS handshake produced a client certificate.
    """
    if not tls:
        return []
    offered = ["OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"]
    return ["EXTERNAL", *offered] if client_cert else offered


def b64decode_response(text: str, *, max_response: int = MAX_RESPONSE) -> bytes:
    """Decode one client response line (without its line ending).

    "=" is the empty initial response (RFC 4954 §4, RFC 4959 §3); an empty line is an
    empty response. A line that cannot decode to at most `max_response` bytes is refused
    before decoding.
    """
    if text == "=":
        return b""
    if len(text) > 4 * -(-max_response // 3):
        raise SaslError("response too long", "too-long")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise SaslError("invalid base64") from None


def b64encode_challenge(data: bytes) -> str:
    """Encode a challenge for a 334 (SMTP) or "+ " (IMAP) line."""
    return base64.b64encode(data).decode("ascii")


class SaslExchange:
    """One authentication attempt: created by start(), driven by step() and fail()."""

    def __init__(self, mechanism: str, steps: _Steps, error: bytes | None, max_response: int):
        self.mechanism = mechanism
        self._steps = steps
        self._error = error
        self._max_response = max_response
        self._state = "new"  # -> challenged -> checking -> [failing ->] done
        self._reason = ""

    def step(self, response: bytes | None = None) -> Challenge | Credentials | Failed:
        """Advance the exchange.

        Call it first without a response (the initial response went to start()), then
        with each client response, already base64-decoded, b"*" for an abort. Returns the
        next Challenge, the Credentials for the front-end to verify, or, after fail(),
        Failed. Raises SaslError on a malformed, oversized or aborted response; the
        exchange is then over.
        """
        if self._state == "new":
            if response is not None:
                raise RuntimeError("the first step() takes no response: pass it to start()")
            return self._advance(None)
        if self._state not in ("challenged", "failing"):
            raise RuntimeError(f"step() called in state {self._state}")
        if response is None:
            raise RuntimeError("step() after a challenge takes the client's response")
        failing = self._state == "failing"
        self._state = "done"
        if response == ABORT:
            raise SaslError("aborted", "aborted")
        if len(response) > self._max_response:
            raise SaslError("response too long", "too-long")
        if failing:
            # RFC 7628 §3.2.3: the client answers the error with ^A (XOAUTH2: empty); any
            # answer ends the exchange the same way.
            return Failed(self._reason)
        return self._advance(response)

    def fail(self, reason: str) -> Challenge | None:
        """The front-end found the credentials bad.

        Returns the mechanism's error challenge (XOAUTH2, OAUTHBEARER: RFC 7628 §3.2.2),
        after which one more step() with the client's answer returns Failed(reason); or
        None: the exchange is over and the front-end replies with the failure at once.
        """
        if self._state != "checking":
            raise RuntimeError("fail() follows the step() that returned credentials")
        self._reason = reason
        if self._error is None:
            self._state = "done"
            return None
        self._state = "failing"
        return Challenge(self._error)

    def _advance(self, response: bytes | None) -> Challenge | Credentials:
        try:
            challenge = next(self._steps) if response is None else self._steps.send(response)
        except StopIteration as finished:
            self._state = "checking"
            return finished.value
        except SaslError:
            self._state = "done"
            raise
        self._state = "challenged"
        return Challenge(challenge)


def start(
    mechanism: str,
    initial: bytes | None = None,
    *,
    max_response: int = MAX_RESPONSE,
    scope: str = DEFAULT_SCOPE,
    openid_configuration: str | None = None,
) -> SaslExchange:
    """Begin an exchange for `mechanism` (case-insensitive, RFC 4422 §3.1).

    `initial` is the decoded initial response, None when the client sent none (b"" when
    it sent "="). `scope` and `openid_configuration` (the issuer's discovery URL) go into
    the OAuth error challenges, telling the client where to get a fresh token.
    """
    name = mechanism.upper()
    if name not in _MECHANISMS:
        raise SaslError("unsupported mechanism", "unknown-mechanism")
    if initial is not None and len(initial) > max_response:
        raise SaslError("response too long", "too-long")
    return SaslExchange(
        name, _MECHANISMS[name](initial), _error_challenge(name, scope, openid_configuration),
        max_response,
    )


def _error_challenge(mechanism: str, scope: str, openid_configuration: str | None) -> bytes | None:
    if mechanism == "XOAUTH2":
        error = {"status": "401", "schemes": "bearer", "scope": scope}
    elif mechanism == "OAUTHBEARER":  # RFC 7628 §3.2.2
        error = {"status": "invalid_token", "scope": scope}
        if openid_configuration:
            error["openid-configuration"] = openid_configuration
    else:
        return None
    return json.dumps(error, separators=(",", ":")).encode()


# Mechanisms: generators that yield challenges, receive responses and return credentials.


def _client_first(initial: bytes | None) -> Generator[bytes, bytes, bytes]:
    """RFC 4422 §5: without an initial response, the server sends an empty challenge."""
    if initial is None:
        initial = yield b""
    return initial


def _plain(initial: bytes | None) -> _Steps:
    """RFC 4616 §2: [authzid] NUL authcid NUL passwd."""
    fields = (yield from _client_first(initial)).split(b"\0")
    if len(fields) != 3:
        raise SaslError("PLAIN expects authzid NUL authcid NUL passwd")
    authzid, authcid, passwd = fields
    if not authcid or not passwd:
        raise SaslError("PLAIN authcid and passwd must not be empty")
    if max(map(len, fields)) > PLAIN_FIELD_MAX:
        raise SaslError("PLAIN field longer than 255 octets")
    return PasswordCredentials("PLAIN", _utf8(authzid) or None, _utf8(authcid), _utf8(passwd))


def _login(initial: bytes | None) -> _Steps:
    """draft-murchison-sasl-login: user name (or the initial response), then password."""
    username = initial if initial is not None else (yield b"Username:")
    if not username or b"\0" in username:
        raise SaslError("LOGIN expects a user name")
    password = yield b"Password:"
    if not password or b"\0" in password:
        raise SaslError("LOGIN expects a password")
    return PasswordCredentials("LOGIN", None, _utf8(username), _utf8(password))


def _external(initial: bytes | None) -> _Steps:
    """RFC 4422 Appendix A: an optional authzid, possibly empty, without NUL."""
    authzid = yield from _client_first(initial)
    if b"\0" in authzid:
        raise SaslError("EXTERNAL authzid contains NUL")
    return ExternalCredentials(_utf8(authzid) or None)


def _xoauth2(initial: bytes | None) -> _Steps:
    """Google's XOAUTH2: "user=" U ^A "auth=Bearer " T ^A ^A."""
    fields = _kvpairs((yield from _client_first(initial)))
    if not fields.get("user") or "auth" not in fields:
        raise SaslError("XOAUTH2 expects user and auth")
    return BearerCredentials("XOAUTH2", fields["user"], _bearer_token(fields["auth"]))


def _oauthbearer(initial: bytes | None) -> _Steps:
    """RFC 7628 §3.1: gs2-header kvsep *kvpair kvsep, with auth required."""
    header, kvsep, pairs = (yield from _client_first(initial)).partition(KVSEP)
    if not kvsep:
        raise SaslError("OAUTHBEARER expects a GS2 header and ^A")
    authzid = _gs2_authzid(header)
    fields = _kvpairs(pairs)
    if "auth" not in fields:
        raise SaslError("OAUTHBEARER expects auth")
    port = fields.get("port")
    if port is not None and not (_PORT.fullmatch(port) and int(port) <= 65535):
        raise SaslError("OAUTHBEARER port is not a port number")
    return BearerCredentials(
        "OAUTHBEARER", authzid, _bearer_token(fields["auth"]),
        fields.get("host") or None, int(port) if port else None,
    )


def _kvpairs(data: bytes) -> dict[str, str]:
    """RFC 7628 §3.1: *kvpair kvsep, where kvpair = key "=" value kvsep."""
    if not data.endswith(KVSEP):
        raise SaslError("missing final ^A")
    *pairs, rest = data[:-1].split(KVSEP)
    if rest:
        raise SaslError("key=value not terminated by ^A")
    fields: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = _utf8(pair).partition("=")
        if not equals or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value) or key in fields:
            raise SaslError("malformed key=value")
        fields[key] = value
    return fields


def _gs2_authzid(header: bytes) -> str | None:
    """RFC 5801 §4: gs2-cb-flag "," [gs2-authzid] ",".

    OAUTHBEARER has no channel binding (RFC 7628 §3.1): "p=" is refused; "y" (the client
    could bind but the server offers no -PLUS variant) is accepted like "n". The "F"
    non-standard flag belongs to GSS-API mechanisms and is refused.
    """
    parts = _utf8(header).split(",")
    if len(parts) != 3 or parts[0] not in ("n", "y") or parts[2]:
        raise SaslError("malformed GS2 header")
    if not parts[1]:
        return None
    if not parts[1].startswith("a=") or not _SASLNAME.fullmatch(parts[1][2:]):
        raise SaslError("malformed GS2 authzid")
    return re.sub("=(2C|3D)", lambda m: "," if m[1] == "2C" else "=", parts[1][2:])


def _bearer_token(auth: str) -> str:
    match = _BEARER.fullmatch(auth)
    if match is None:
        raise SaslError("auth is not a Bearer token")
    return match[1]


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("not UTF-8") from None


_MECHANISMS = {
    "OAUTHBEARER": _oauthbearer,
    "XOAUTH2": _xoauth2,
    "EXTERNAL": _external,
    "PLAIN": _plain,
    "LOGIN": _login,
}
