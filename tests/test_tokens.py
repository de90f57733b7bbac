"""Tokens: the dev issuer's tokens verify, and every forgery or misfit the verifier must refuse is refused."""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import socket
import stat
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certs.jose import (JoseError, decode_unverified_claims, decode_unverified_header, decrypt_jwe,
                        generate_signing_key, load_private_jwk, private_jwk_json, public_jwks, sign_jwt,
                        verify_jwt)
from certs.pki import create_ca, issue_server
from certs.tls import client_context, server_context
from certs.tokens import DevIssuer, TokenError, TokenVerifier
from config.settings import Issuer

ISS = "https://localhost:8443/oidc"
IDNAT = "810001045367"
PERSON = {"idnat": IDNAT, "given_name": "Jeanne", "family_name": "Martin"}
LEEWAY = 30


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict) -> str:
    return b64(json.dumps(value).encode())


def resigned(token: str, key, **changes) -> str:
    """The token's claims with `changes` applied (None removes a claim), signed again by `key`."""
    claims = decode_unverified_claims(token)
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return sign_jwt(claims, key)


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        verifier.verify(token)
    return caught.value.code


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> DevIssuer:
    return DevIssuer.create(tmp_path_factory.mktemp("data"), ISS)


def config(issuer: DevIssuer, *, acr: str = "eidas1") -> Issuer:
    return Issuer(issuer=ISS, audience="msante", jwks_file=str(issuer.jwks_path), acr=acr)


@pytest.fixture(scope="module")
def verifier(issuer) -> TokenVerifier:
    return TokenVerifier([config(issuer)], LEEWAY)


def test_a_dev_token_verifies(issuer, verifier):
    token = issuer.issue_access_token(**PERSON)
    verified = verifier.verify(token)
    assert verified.idnat == IDNAT
    assert verified.issuer == ISS
    assert abs(verified.expires_at.timestamp() - (time.time() + 300)) < 5
    assert verified.subject == verifier.verify(issuer.issue_access_token(**PERSON)).subject  # stable per person
    assert verified.subject != IDNAT  # opaque, as PSC's
    other = verifier.verify(issuer.issue_access_token(idnat="810002345671", given_name="A", family_name="B"))
    assert other.subject != verified.subject


def test_dev_tokens_have_the_psc_shape(issuer, verifier):
    token = issuer.issue_access_token(**PERSON, extra={"SubjectOrganization": "CHU EXEMPLE"})
    header = decode_unverified_header(token)
    assert header == {"alg": "RS256", "kid": issuer.key.kid, "typ": "JWT"}
    claims = verifier.verify(token).claims
    assert claims["SubjectNameID"] == claims["preferred_username"] == IDNAT
    assert (claims["given_name"], claims["family_name"]) == ("Jeanne", "Martin")
    assert claims["acr"] == "eidas1" and claims["scope"] == "openid scope_all"
    assert claims["aud"] == claims["azp"] == "msante"
    assert claims["nbf"] == claims["iat"] and claims["exp"] == claims["iat"] + 300 and claims["jti"]
    exercice = claims["SubjectRefPro"]["exercices"][0]
    assert exercice["codeProfession"] == "10" and exercice["nomDexercice"] == "Martin"
    assert {"codeCategorieProfessionnelle", "codeSavoirFaire", "prenomDexercice", "activities"} <= set(exercice)
    assert claims["SubjectRole"] == ["10^1.2.250.1.71.1.2.7"]
    assert claims["SubjectOrganization"] == "CHU EXEMPLE"


def test_given_exercices_are_carried_as_they_are(issuer, verifier):
    exercices = [{"codeProfession": "60", "codeCategorieProfessionnelle": "C", "codeSavoirFaire": "",
                  "nomDexercice": "Martin", "prenomDexercice": "Jeanne",
                  "activities": [{"numeroFinessSite": "330000001", "raisonSocialeSite": "CHU EXEMPLE"}]}]
    claims = verifier.verify(issuer.issue_access_token(**PERSON, exercices=exercices)).claims
    assert claims["SubjectRefPro"]["exercices"] == exercices
    assert claims["SubjectRole"] == ["60^1.2.250.1.71.1.2.7"]


def test_signature_by_another_key_under_the_same_kid_is_refused(issuer, verifier):
    impostor = generate_signing_key(issuer.key.kid)
    forged = resigned(issuer.issue_access_token(**PERSON), impostor)
    assert refused(verifier, forged) == "bad_signature"


def test_tampered_claims_are_refused(issuer, verifier):
    head, _, signature = issuer.issue_access_token(**PERSON).split(".")
    claims = decode_unverified_claims(issuer.issue_access_token(**PERSON))
    claims["SubjectNameID"] = "810002345671"
    assert refused(verifier, f"{head}.{b64json(claims)}.{signature}") == "bad_signature"


def test_expiry_is_enforced_with_leeway(issuer):
    token = issuer.issue_access_token(**PERSON, ttl=60)
    later = time.time() + 60
    TokenVerifier([config(issuer)], LEEWAY, clock=lambda: later + LEEWAY - 2).verify(token)
    assert refused(TokenVerifier([config(issuer)], LEEWAY, clock=lambda: later + LEEWAY + 2), token) == "expired"


def test_token_from_the_future_is_refused(issuer):
    token = issuer.issue_access_token(**PERSON)
    earlier = TokenVerifier([config(issuer)], LEEWAY, clock=lambda: time.time() - 3600)
    assert refused(earlier, token) == "not_yet_valid"
    only_iat = resigned(token, issuer.key, nbf=None)
    assert refused(earlier, only_iat) == "not_yet_valid"


def test_missing_expiry_is_refused(issuer, verifier):
    assert refused(verifier, resigned(issuer.issue_access_token(**PERSON), issuer.key, exp=None)) == "malformed"


def test_wrong_audience_is_refused(issuer, verifier):
    assert refused(verifier, issuer.issue_access_token(**PERSON, audience="autre-service")) == "wrong_audience"
    several = resigned(issuer.issue_access_token(**PERSON), issuer.key, aud=["autre-service", "msante"])
    assert verifier.verify(several).idnat == IDNAT
    as_object = resigned(issuer.issue_access_token(**PERSON), issuer.key, aud={"msante": True})
    assert refused(verifier, as_object) == "wrong_audience"


def test_unknown_issuer_is_refused(tmp_path, verifier):
    stranger = DevIssuer.create(tmp_path, "https://idp.example.test/realms/x")
    assert refused(verifier, stranger.issue_access_token(**PERSON)) == "unknown_issuer"


def test_our_issuer_name_with_another_issuers_key_is_refused(tmp_path, verifier):
    """Keys are chosen by the claimed issuer: a stranger claiming to be ours needs our key."""
    stranger = DevIssuer.create(tmp_path, ISS)
    assert refused(verifier, stranger.issue_access_token(**PERSON)) == "bad_signature"


def test_alg_none_is_refused(issuer, verifier):
    claims = decode_unverified_claims(issuer.issue_access_token(**PERSON))
    for alg in ("none", "None", "NONE"):
        token = f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': issuer.key.kid})}.{b64json(claims)}."
        assert refused(verifier, token) == "bad_algorithm"


def public_key_forms(issuer: DevIssuer) -> list[bytes]:
    """Every public form of the issuer's key an attacker could use as an HMAC secret."""
    jwk = json.loads(issuer.jwks_path.read_text())["keys"][0]
    numbers = rsa.RSAPublicNumbers(int.from_bytes(base64.urlsafe_b64decode(jwk["e"] + "=="), "big"),
                                   int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=="), "big"))
    public = numbers.public_key()
    return [public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
            issuer.jwks_path.read_bytes(), json.dumps(jwk).encode()]


@pytest.mark.parametrize("alg,digest", [("HS256", hashlib.sha256), ("HS512", hashlib.sha512)])
def test_hmac_signed_with_the_public_key_is_refused(issuer, verifier, alg, digest):
    claims = decode_unverified_claims(issuer.issue_access_token(**PERSON))
    jwks = json.loads(issuer.jwks_path.read_text())
    for secret in public_key_forms(issuer):
        signing_input = f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': issuer.key.kid})}.{b64json(claims)}"
        token = f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}"
        assert refused(verifier, token) == "bad_algorithm"
        with pytest.raises(JoseError, match="never accepted"):  # even when a caller lists it
            verify_jwt(token, jwks, algorithms=[alg, "RS256"])


def test_hmac_cannot_be_configured(issuer):
    with pytest.raises(ValueError, match="never accepted"):
        TokenVerifier([config(issuer)], LEEWAY, algorithms=["RS256", "HS256"])


def test_algorithm_outside_the_allow_list_is_refused(issuer):
    only_ps256 = TokenVerifier([config(issuer)], LEEWAY, algorithms=["PS256"])
    assert refused(only_ps256, issuer.issue_access_token(**PERSON)) == "bad_algorithm"


def test_a_key_serves_only_the_algorithm_it_is_published_for(issuer):
    claims = decode_unverified_claims(issuer.issue_access_token(**PERSON))
    same_key = json.loads(private_jwk_json(issuer.key))
    del same_key["alg"]
    unpinned = load_private_jwk(json.dumps(same_key))
    token = sign_jwt(claims, unpinned, alg="PS256")
    assert verify_jwt(token, public_jwks([unpinned]), algorithms=["PS256"])["SubjectNameID"] == IDNAT
    with pytest.raises(JoseError, match="not meant for PS256"):  # the published JWK says RS256
        verify_jwt(token, json.loads(issuer.jwks_path.read_text()), algorithms=["PS256", "RS256"])


@pytest.mark.parametrize("acr", [None, "eidas0", "1", ""])
def test_missing_or_lower_acr_is_refused_when_required(issuer, verifier, acr):
    token = resigned(issuer.issue_access_token(**PERSON), issuer.key, acr=acr)
    if acr is not None:
        token = issuer.issue_access_token(**PERSON, acr=acr)
    assert refused(verifier, token) == "acr"


def test_higher_acr_is_accepted_and_unrequired_acr_is_not_checked(issuer, verifier):
    assert verifier.verify(issuer.issue_access_token(**PERSON, acr="eidas2")).idnat == IDNAT
    substantial = TokenVerifier([config(issuer, acr="eidas2")], LEEWAY)
    assert refused(substantial, issuer.issue_access_token(**PERSON, acr="eidas1")) == "acr"
    assert substantial.verify(issuer.issue_access_token(**PERSON, acr="eidas3")).idnat == IDNAT
    lenient = TokenVerifier([config(issuer, acr="")], LEEWAY)
    assert lenient.verify(resigned(issuer.issue_access_token(**PERSON), issuer.key, acr=None)).idnat == IDNAT


@pytest.mark.parametrize("value", [None, "", "not-an-idnat", 810001045367])
def test_missing_national_identifier_is_refused(issuer, verifier, value):
    token = resigned(issuer.issue_access_token(**PERSON), issuer.key, SubjectNameID=value)
    if value == "":
        token = issuer.issue_access_token(**PERSON, extra={"SubjectNameID": ""})
    assert refused(verifier, token) == "no_identity"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "!!.!!.!!", "x" * 20000, None,
                                   f"{b64(b'[]')}.{b64(b'{}')}.", f"{b64json({'alg': 'RS256'})}.{b64(b'[1]')}."])
def test_garbage_is_malformed(verifier, token):
    assert refused(verifier, token) == "malformed"


def test_jwks_file_rotation_is_picked_up(tmp_path):
    first = DevIssuer.create(tmp_path / "a", ISS)
    second = DevIssuer.create(tmp_path / "b", ISS)
    verifier = TokenVerifier([config(first)], LEEWAY)
    old_token, new_token = first.issue_access_token(**PERSON), second.issue_access_token(**PERSON)
    assert verifier.verify(old_token).idnat == IDNAT
    assert refused(verifier, new_token) == "bad_signature"
    replacement = first.jwks_path.with_name("jwks.json.new")
    replacement.write_bytes(second.jwks_path.read_bytes())
    os.replace(replacement, first.jwks_path)  # as an operator rotating keys would
    assert verifier.verify(new_token).idnat == IDNAT
    assert refused(verifier, old_token) == "bad_signature"


def test_unreadable_key_file_is_our_failure_not_the_callers(tmp_path, issuer):
    missing = Issuer(issuer=ISS, audience="msante", jwks_file=str(tmp_path / "absent.json"))
    assert refused(TokenVerifier([missing], LEEWAY), issuer.issue_access_token(**PERSON)) == "keys_unavailable"
    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": ')
    bad = Issuer(issuer=ISS, audience="msante", jwks_file=str(broken))
    assert refused(TokenVerifier([bad], LEEWAY), issuer.issue_access_token(**PERSON)) == "keys_unavailable"


def test_dev_issuer_files(tmp_path):
    created = DevIssuer.create(tmp_path, ISS)
    key_file = tmp_path / "oidc" / "signing-key.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    published = json.loads(created.jwks_path.read_text())
    assert created.jwks_path == tmp_path / "oidc" / "jwks.json"
    assert [k["kid"] for k in published["keys"]] == [created.key.kid]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published["keys"][0])
    with pytest.raises(FileExistsError):
        DevIssuer.create(tmp_path, ISS)
    loaded = DevIssuer.load(tmp_path, ISS)
    assert loaded.key.kid == created.key.kid
    verifier = TokenVerifier([config(created)], LEEWAY)
    assert verifier.verify(loaded.issue_access_token(**PERSON)).idnat == IDNAT


def test_issuer_configuration_mistakes_are_refused(issuer):
    with pytest.raises(ValueError, match="https"):
        TokenVerifier([Issuer(issuer=ISS, audience="msante", jwks_url="http://idp.test/certs")], LEEWAY)
    with pytest.raises(ValueError, match="twice"):
        TokenVerifier([config(issuer), config(issuer)], LEEWAY)
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier([Issuer(issuer=ISS, audience="msante")], LEEWAY)


# --- keys published at a URL, as PSC's -------------------------------------------------------------------------

class JwksServer:
    """An HTTPS server on loopback publishing `body` and counting requests."""

    def __init__(self, tls) -> None:
        self.body, self.requests = b"", 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}/protocol/openid-connect/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    directory = tmp_path_factory.mktemp("https")
    ca = create_ca(directory)
    cert, key = issue_server(ca, ["localhost", "127.0.0.1"], directory)
    server = JwksServer(server_context(cert, key))
    yield server, client_context(ca.cert_path)
    server.close()


def test_jwks_url_is_fetched_cached_and_refetched_at_most_once_a_minute(tmp_path, https):
    server, client_tls = https
    first = DevIssuer.create(tmp_path / "a", ISS)
    second = DevIssuer.create(tmp_path / "b", ISS)
    server.body, server.requests = first.jwks_path.read_bytes(), 0
    now = [time.time()]
    url_issuer = Issuer(issuer=ISS, audience="msante", jwks_url=server.url, acr="eidas1")
    verifier = TokenVerifier([url_issuer], LEEWAY, jwks_tls=client_tls, clock=lambda: now[0])

    assert verifier.verify(first.issue_access_token(**PERSON)).idnat == IDNAT
    assert verifier.verify(first.issue_access_token(**PERSON)).idnat == IDNAT
    assert server.requests == 1

    server.body = second.jwks_path.read_bytes()  # the issuer rotates its key
    rotated = second.issue_access_token(**PERSON)
    assert refused(verifier, rotated) == "bad_signature"  # unknown kid, but fetched too recently
    assert server.requests == 1
    now[0] += 61
    assert verifier.verify(rotated).idnat == IDNAT
    assert server.requests == 2

    made_up = generate_signing_key("made-up-kid")
    for _ in range(5):
        assert refused(verifier, resigned(rotated, made_up)) == "bad_signature"
    assert server.requests == 2  # a flood of unknown kids is not a flood of requests


def test_jwks_url_unreachable_is_our_failure(issuer, https):
    _, client_tls = https
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    dead = Issuer(issuer=ISS, audience="msante", jwks_url=f"https://localhost:{port}/certs")
    verifier = TokenVerifier([dead], LEEWAY, jwks_tls=client_tls)
    assert refused(verifier, issuer.issue_access_token(**PERSON)) == "keys_unavailable"


def test_jwks_url_with_an_untrusted_certificate_is_not_used(issuer, https):
    server, _ = https
    untrusted = Issuer(issuer=ISS, audience="msante", jwks_url=server.url)
    verifier = TokenVerifier([untrusted], LEEWAY)  # system CAs: our dev CA is not among them
    assert refused(verifier, issuer.issue_access_token(**PERSON)) == "keys_unavailable"


# --- encrypted userinfo ----------------------------------------------------------------------------------------

def encryption_key():
    data = json.loads(private_jwk_json(generate_signing_key("enc-1")))
    data["use"] = "enc"
    del data["alg"]
    public = rsa.RSAPublicNumbers(int.from_bytes(base64.urlsafe_b64decode(data["e"] + "=="), "big"),
                                  int.from_bytes(base64.urlsafe_b64decode(data["n"] + "=="), "big")).public_key()
    return load_private_jwk(json.dumps(data)), public


def hand_built_jwe(public, plaintext: bytes, *, alg: str) -> str:
    """A compact JWE (RFC 7516) built with cryptography alone, independent of the library under test."""
    header = b64json({"alg": alg, "enc": "A256GCM", "kid": "enc-1"})
    cek, iv = os.urandom(32), os.urandom(12)
    if alg == "RSA-OAEP":
        wrapped = public.encrypt(cek, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
    else:
        wrapped = public.encrypt(cek, padding.PKCS1v15())
    sealed = AESGCM(cek).encrypt(iv, plaintext, header.encode())
    return ".".join([header, b64(wrapped), b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])


def test_encrypted_userinfo_is_decrypted():
    key, public = encryption_key()
    userinfo = json.dumps({"SubjectNameID": IDNAT}).encode()
    assert decrypt_jwe(hand_built_jwe(public, userinfo, alg="RSA-OAEP"), key) == userinfo
    tampered = hand_built_jwe(public, userinfo, alg="RSA-OAEP")[:-4] + "AAAA"
    with pytest.raises(JoseError):
        decrypt_jwe(tampered, key)


def test_rsa1_5_key_transport_is_refused():
    key, public = encryption_key()
    with pytest.raises(JoseError):
        decrypt_jwe(hand_built_jwe(public, b"{}", alg="RSA1_5"), key)
