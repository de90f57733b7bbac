"""mailserver.sasl: each mechanism's grammar and steps, its failures, limits and secrets."""
import base64
import json

import pytest

from mailserver import sasl
from mailserver.sasl import (
    BearerCredentials,
    Challenge,
    ExternalCredentials,
    Failed,
    PasswordCredentials,
    SaslError,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmMDAxIn0.c2lnbmF0dXJl-_~+/="
XOAUTH2 = f"user=dr.martin@hopital.mssante.fr\x01auth=Bearer {TOKEN}\x01\x01".encode()
OAUTHBEARER = (
    f"n,a=dr.martin@hopital.mssante.fr,\x01host=mail.msante.test\x01port=587\x01"
    f"auth=Bearer {TOKEN}\x01\x01"
).encode()


def run(mechanism, initial, *responses):
    """Start an exchange and feed it responses; return every result in order."""
    exchange = sasl.start(mechanism, initial)
    results = [exchange.step()]
    for response in responses:
        results.append(exchange.step(response))
    return results


def malformed(mechanism, initial, kind="malformed"):
    with pytest.raises(SaslError) as caught:
        run(mechanism, initial)
    assert caught.value.kind == kind
    return caught.value


# --- happy paths, with and without initial response ---------------------------------


def test_plain_with_initial_response():
    assert run("PLAIN", b"\0dr.martin\0s3cret") == [
        PasswordCredentials("PLAIN", None, "dr.martin", "s3cret")
    ]


def test_plain_with_authzid_without_initial_response():
    assert run("plain", None, b"secretariat@x\0dr.martin\0s3cr\xc3\xa9t") == [
        Challenge(b""),
        PasswordCredentials("PLAIN", "secretariat@x", "dr.martin", "s3crét"),
    ]


def test_login_without_initial_response():
    assert run("LOGIN", None, b"dr.martin", b"s3cret") == [
        Challenge(b"Username:"),
        Challenge(b"Password:"),
        PasswordCredentials("LOGIN", None, "dr.martin", "s3cret"),
    ]


def test_login_with_initial_response_skips_the_username_prompt():
    assert run("LOGIN", b"dr.martin", b"s3cret") == [
        Challenge(b"Password:"),
        PasswordCredentials("LOGIN", None, "dr.martin", "s3cret"),
    ]


def test_external_with_empty_and_given_authzid():
    assert run("EXTERNAL", b"") == [ExternalCredentials(None)]
    assert run("EXTERNAL", b"lab@chu.mssante.fr") == [ExternalCredentials("lab@chu.mssante.fr")]
    assert run("EXTERNAL", None, b"") == [Challenge(b""), ExternalCredentials(None)]
    assert ExternalCredentials(None).mechanism == "EXTERNAL"


def test_xoauth2_with_and_without_initial_response():
    expected = BearerCredentials("XOAUTH2", "dr.martin@hopital.mssante.fr", TOKEN)
    assert run("XOAUTH2", XOAUTH2) == [expected]
    assert run("xoauth2", None, XOAUTH2) == [Challenge(b""), expected]


def test_oauthbearer_with_and_without_initial_response():
    expected = BearerCredentials(
        "OAUTHBEARER", "dr.martin@hopital.mssante.fr", TOKEN, "mail.msante.test", 587
    )
    assert run("OAUTHBEARER", OAUTHBEARER) == [expected]
    assert run("OAUTHBEARER", None, OAUTHBEARER) == [Challenge(b""), expected]


def test_oauthbearer_minimal_and_escaped_authzid():
    assert run("OAUTHBEARER", f"n,,\x01auth=bearer {TOKEN}\x01\x01".encode()) == [
        BearerCredentials("OAUTHBEARER", None, TOKEN)
    ]
    # RFC 5801 saslname: "=2C" is ",", "=3D" is "="; "y": client could bind, server cannot.
    (creds,) = run("OAUTHBEARER", f"y,a=a=2Cb=3D2C,\x01auth=Bearer {TOKEN}\x01\x01".encode())
    assert creds.user == "a,b=2C"


def test_oauthbearer_ignores_extension_keys():
    (creds,) = run("OAUTHBEARER", f"n,,\x01xfoo=bar\x01auth=Bearer {TOKEN}\x01\x01".encode())
    assert creds.token == TOKEN and creds.host is None and creds.port is None


def test_credentials_type_alias_covers_every_kind():
    for result in (run("PLAIN", b"\0u\0p") + run("EXTERNAL", b"") + run("XOAUTH2", XOAUTH2)):
        assert isinstance(result, sasl.Credentials)
    assert not isinstance(Challenge(b""), sasl.Credentials)


def test_unknown_mechanism():
    with pytest.raises(SaslError) as caught:
        sasl.start("CRAM-MD5", None)
    assert caught.value.kind == "unknown-mechanism"


# --- failure dance ------------------------------------------------------------------


def test_xoauth2_failure_sends_json_error_then_fails():
    exchange = sasl.start("XOAUTH2", XOAUTH2)
    assert isinstance(exchange.step(), BearerCredentials)
    challenge = exchange.fail("token expired")
    assert json.loads(challenge.data) == {"status": "401", "schemes": "bearer", "scope": "openid"}
    assert exchange.step(b"") == Failed("token expired")
    with pytest.raises(RuntimeError):
        exchange.step(b"")


def test_oauthbearer_failure_sends_json_error_then_fails():
    discovery = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet/.well-known/openid-configuration"
    exchange = sasl.start("OAUTHBEARER", OAUTHBEARER, openid_configuration=discovery)
    exchange.step()
    error = json.loads(exchange.fail("acr below eidas1").data)
    assert error == {"status": "invalid_token", "scope": "openid", "openid-configuration": discovery}
    assert exchange.step(b"\x01") == Failed("acr below eidas1")


def test_client_may_abort_instead_of_answering_the_error():
    exchange = sasl.start("OAUTHBEARER", OAUTHBEARER)
    exchange.step()
    exchange.fail("bad")
    with pytest.raises(SaslError) as caught:
        exchange.step(b"*")
    assert caught.value.kind == "aborted"


@pytest.mark.parametrize("mechanism, initial", [("PLAIN", b"\0u\0p"), ("EXTERNAL", b"")])
def test_mechanisms_without_error_challenge_end_at_fail(mechanism, initial):
    exchange = sasl.start(mechanism, initial)
    exchange.step()
    assert exchange.fail("bad password") is None
    with pytest.raises(RuntimeError):
        exchange.step(b"")


def test_misuse_is_a_programming_error():
    exchange = sasl.start("LOGIN")
    with pytest.raises(RuntimeError):
        exchange.step(b"too early")
    exchange = sasl.start("LOGIN")
    exchange.step()
    with pytest.raises(RuntimeError):
        exchange.fail("no credentials yet")
    with pytest.raises(RuntimeError):
        exchange.step(None)


# --- malformed input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        f"user=u\x01auth=Bearer {TOKEN}\x01".encode(),  # final ^A missing
        f"user=u auth=Bearer {TOKEN}".encode(),  # no separators at all
        f"auth=Bearer {TOKEN}\x01\x01".encode(),  # no user
        b"user=u\x01\x01",  # no auth
        b"user=u\x01auth=Basic dTpw\x01\x01",  # not a bearer token
        b"user=u\x01auth=Bearer two words\x01\x01",  # not a b64token
        f"user=u\x01user=v\x01auth=Bearer {TOKEN}\x01\x01".encode(),  # duplicate key
        f"user=u\x01\x01auth=Bearer {TOKEN}\x01\x01".encode(),  # empty pair
        f"us3r=u\x01auth=Bearer {TOKEN}\x01\x01".encode(),  # key not ALPHA
        b"",
    ],
)
def test_xoauth2_malformed(response):
    malformed("XOAUTH2", response)


@pytest.mark.parametrize(
    "response",
    [
        f"p=tls-server-end-point,,\x01auth=Bearer {TOKEN}\x01\x01",  # channel binding
        f"F,n,,\x01auth=Bearer {TOKEN}\x01\x01",  # GSS non-standard flag
        f"x,,\x01auth=Bearer {TOKEN}\x01\x01",  # unknown cb flag
        f"n,u=someone,\x01auth=Bearer {TOKEN}\x01\x01",  # not a=
        f"n,a=,\x01auth=Bearer {TOKEN}\x01\x01",  # empty saslname
        f"n,a=bad=20name,\x01auth=Bearer {TOKEN}\x01\x01",  # "=" not =2C/=3D
        f"n,a=u\x01auth=Bearer {TOKEN}\x01\x01",  # header lacks its final comma
        f"n,,auth=Bearer {TOKEN}\x01\x01",  # kvsep after the header missing
        f"n,,\x01auth=Bearer {TOKEN}\x01",  # final kvsep missing
        "n,,\x01host=h\x01\x01",  # no auth
        f"n,,\x01port=99999\x01auth=Bearer {TOKEN}\x01\x01",  # not a port
        f"n,,\x01port=smtp\x01auth=Bearer {TOKEN}\x01\x01",
        "\x01",  # the post-error answer, not a first message
        "n,,",
    ],
)
def test_oauthbearer_malformed(response):
    malformed("OAUTHBEARER", response.encode())


@pytest.mark.parametrize(
    "response",
    [
        b"dr.martin s3cret",  # no NUL
        b"\0dr.martin",  # one NUL
        b"a\0b\0c\0d",  # three NULs
        b"\0\0s3cret",  # empty authcid
        b"\0dr.martin\0",  # empty passwd
        b"\0dr.martin\0" + b"p" * 256,  # passwd over 255 octets
        b"\0" + b"u" * 256 + b"\0p",
        b"\0dr.martin\0\xff\xfe",  # not UTF-8
    ],
)
def test_plain_malformed(response):
    malformed("PLAIN", response)


def test_plain_accepts_255_octet_fields():
    (creds,) = run("PLAIN", b"a" * 255 + b"\0" + b"u" * 255 + b"\0" + b"p" * 255)
    assert len(creds.password) == 255


def test_login_and_external_malformed():
    malformed("LOGIN", b"")
    with pytest.raises(SaslError):
        run("LOGIN", b"dr.martin", b"")
    with pytest.raises(SaslError):
        run("LOGIN", None, b"dr\0martin")
    malformed("EXTERNAL", b"app\0other")
    malformed("EXTERNAL", b"\xc3")


def test_after_an_error_the_exchange_is_over():
    exchange = sasl.start("LOGIN")
    exchange.step()
    with pytest.raises(SaslError):
        exchange.step(b"")
    with pytest.raises(RuntimeError):
        exchange.step(b"dr.martin")


# --- base64, abort, limits ----------------------------------------------------------


def test_base64_codec():
    assert sasl.b64decode_response("=") == b""
    assert sasl.b64decode_response("") == b""
    assert sasl.b64decode_response("AGRyLm1hcnRpbgBzM2NyZXQ=") == b"\0dr.martin\0s3cret"
    assert sasl.b64encode_challenge(b"Username:") == "VXNlcm5hbWU6"
    assert sasl.b64encode_challenge(b"") == ""
    assert sasl.b64decode_response(sasl.b64encode_challenge(XOAUTH2)) == XOAUTH2


@pytest.mark.parametrize("text", ["not base64!", "AGRy\nLm1h", "YWJ", "YQ=", "é", "*"])
def test_bad_base64(text):
    with pytest.raises(SaslError) as caught:
        sasl.b64decode_response(text)
    assert caught.value.kind == "malformed"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "EXTERNAL"])
def test_abort(mechanism):
    exchange = sasl.start(mechanism)
    assert isinstance(exchange.step(), Challenge)
    with pytest.raises(SaslError, match="aborted") as caught:
        exchange.step(b"*")
    assert caught.value.kind == "aborted"


def test_default_limit_admits_large_tokens_and_refuses_larger():
    big = "A" * 12000
    (creds,) = run("XOAUTH2", f"user=u\x01auth=Bearer {big}\x01\x01".encode())
    assert creds.token == big
    oversized = b"\0u\0" + b"p" * sasl.MAX_RESPONSE
    with pytest.raises(SaslError) as caught:
        sasl.start("PLAIN", oversized)
    assert caught.value.kind == "too-long"
    exchange = sasl.start("PLAIN")
    exchange.step()
    with pytest.raises(SaslError) as caught:
        exchange.step(oversized)
    assert caught.value.kind == "too-long"


def test_limit_is_configurable_and_checked_before_decoding():
    exchange = sasl.start("LOGIN", max_response=8)
    exchange.step()
    assert exchange.step(b"12345678") == Challenge(b"Password:")
    with pytest.raises(SaslError):
        exchange.step(b"123456789")
    line = base64.b64encode(b"x" * (sasl.MAX_RESPONSE + 3)).decode()
    with pytest.raises(SaslError) as caught:
        sasl.b64decode_response(line)
    assert caught.value.kind == "too-long"
    assert len(sasl.b64decode_response(base64.b64encode(b"x" * sasl.MAX_RESPONSE).decode())) == sasl.MAX_RESPONSE


# --- advertising ---------------------------------------------------------------------


def test_advertised_mechanisms():
    assert sasl.mechanisms(tls=False, client_cert=False) == []
    assert sasl.mechanisms(tls=True, client_cert=False) == ["OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"]
    with_cert = sasl.mechanisms(tls=True, client_cert=True)
    assert with_cert[0] == "EXTERNAL" and set(with_cert[1:]) == {"OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"}
    for name in with_cert:
        sasl.start(name)  # everything advertised can be started


# --- secrets -------------------------------------------------------------------------


def test_secrets_absent_from_repr_and_str():
    (bearer,) = run("XOAUTH2", XOAUTH2)
    (password,) = run("PLAIN", b"\0dr.martin\0Tr0ub4dor&3")
    for creds, secret in ((bearer, TOKEN), (password, "Tr0ub4dor&3")):
        assert secret not in repr(creds) and secret not in str(creds)
    assert "dr.martin" in repr(password)  # the rest stays visible for logs
    assert bearer.token == TOKEN and password.password == "Tr0ub4dor&3"


@pytest.mark.parametrize(
    "mechanism, response",
    [
        ("XOAUTH2", b"user=u\x01auth=Basic SECRETVALUE\x01\x01"),
        ("XOAUTH2", b"user=u\x01auth=Bearer SECRETVALUE\x01"),
        ("OAUTHBEARER", b"p=SECRETVALUE,,\x01auth=Bearer SECRETVALUE\x01\x01"),
        ("PLAIN", b"\0u\0SECRETVALUE" + b"x" * 300),
        ("PLAIN", b"SECRETVALUE"),
    ],
)
def test_secrets_absent_from_errors(mechanism, response):
    error = malformed(mechanism, response)
    assert "SECRETVALUE" not in str(error) and "SECRETVALUE" not in repr(error)
