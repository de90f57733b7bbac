"""Sign-in at the dev issuer: the authorization code flow with PKCE, over HTTPS, as the web
client runs it (the browser test drives the same endpoints through Chromium)."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import select

import config
from msante import cli
from store.schema import audit

NURSE = "810002000023"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def call(server, method: str, path: str, form: dict | None = None, token: str | None = None,
         source: str | None = None) -> tuple[int, dict[str, str], str]:
    """One request; from `source`, another address of this machine, when given."""
    port = int(server.listeners["https"].rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1" if source else "localhost", port, context=server.client_tls(),
                                       timeout=10, source_address=(source, 0) if source else None)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=urlencode(form) if form is not None else None, headers=headers)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def authorization(server, challenge: str, **changes: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": "msante-web", "redirect_uri": f"{server.settings.public_url}/",
            "scope": "openid", "state": "xyz", "code_challenge": challenge, "code_challenge_method": "S256",
            "nonce": "n-1", **changes}


def sign_in(server, idnat: str = NURSE) -> tuple[str, str]:
    """(code, verifier) after choosing `idnat` on the dev issuer's page."""
    verifier, challenge = pkce()
    status, headers, _ = call(server, "POST", "/oidc/authorize", {**authorization(server, challenge), "idnat": idnat})
    assert status == 303, headers
    location = urlsplit(headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{server.settings.public_url}/"
    answer = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert answer["state"] == "xyz" and answer["iss"] == server.settings.public_url
    return answer["code"], verifier


def exchange(server, code: str, verifier: str) -> tuple[int, dict]:
    status, _, body = call(server, "POST", "/oidc/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": f"{server.settings.public_url}/",
        "client_id": "msante-web", "code_verifier": verifier})
    return status, json.loads(body)


def test_discovery_names_the_endpoints(server):
    _, _, body = call(server, "GET", "/.well-known/openid-configuration")
    config = json.loads(body)
    assert config["authorization_endpoint"] == f"{server.settings.public_url}/oidc/authorize"
    assert config["token_endpoint"] == f"{server.settings.public_url}/oidc/token"
    assert config["code_challenge_methods_supported"] == ["S256"]


def test_code_flow_with_pkce(server):
    _, challenge = pkce()
    status, headers, page = call(server, "GET", "/oidc/authorize?" + urlencode(authorization(server, challenge)))
    assert status == 200 and "Connexion de démonstration" in page
    assert "form-action 'self'" in headers["content-security-policy"]
    assert re.findall(r'name="idnat" value="(\d+)"', page) == [
        "810001045367", "810002000049", "810002000023", "810002000015", "810002000031"]  # by family name
    code, verifier = sign_in(server)
    status, tokens = exchange(server, code, verifier)
    assert status == 200 and tokens["token_type"] == "Bearer" and tokens["expires_in"] == 300
    status, _, circles = call(server, "GET", "/api/circles", token=tokens["access_token"])
    assert status == 200 and [c["id"] for c in json.loads(circles)["items"]] == [1]
    assert exchange(server, code, verifier) == (400, {"error": "invalid_grant",  # a code serves once
                                                      "error_description": "unknown, used or expired code"})

    status, _, body = call(server, "POST", "/oidc/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "msante-web"})
    refreshed = json.loads(body)
    assert status == 200 and refreshed["refresh_token"] != tokens["refresh_token"]
    status, _, body = call(server, "POST", "/oidc/token", {  # rotated: the old one is spent
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "msante-web"})
    assert (status, json.loads(body)["error"]) == (400, "invalid_grant")
    rows = server.rows(select(audit.c.actor, audit.c.detail).where(audit.c.action == "oidc.token"))
    assert [r["actor"] for r in rows] == [NURSE, NURSE]


def test_a_wrong_verifier_gets_nothing(server):
    code, _ = sign_in(server)
    other_verifier, _ = pkce()
    status, error = exchange(server, code, other_verifier)
    assert (status, error["error"]) == (400, "invalid_grant")
    code, verifier = sign_in(server)
    assert exchange(server, code, verifier[:20])[1]["error"] == "invalid_request"  # too short to be a verifier


@pytest.mark.parametrize("changes, error", [
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
def test_bad_requests_go_back_with_an_error(server, changes, error):
    _, challenge = pkce()
    query = urlencode(authorization(server, challenge, **changes))
    status, headers, _ = call(server, "GET", f"/oidc/authorize?{query}")
    assert status == 303
    answer = parse_qs(urlsplit(headers["location"]).query)
    assert answer["error"] == [error] and answer["state"] == ["xyz"]


@pytest.mark.parametrize("changes", [{"redirect_uri": "https://evil.test/"}, {"client_id": "someone"}])
def test_unknown_clients_are_never_redirected_to(server, changes):
    _, challenge = pkce()
    query = urlencode(authorization(server, challenge, **changes))
    status, headers, _ = call(server, "GET", f"/oidc/authorize?{query}")
    assert status == 400 and "location" not in headers


def test_only_demo_professionals_can_be_chosen(server):
    _, challenge = pkce()
    status, headers, _ = call(server, "POST", "/oidc/authorize", {**authorization(server, challenge),
                                                                  "idnat": "899999999999"})
    assert status == 400 and "location" not in headers


def non_loopback_address() -> str:
    """An IPv4 address of this machine outside 127/8: a connection from it to 127.0.0.1 never
    leaves the loopback interface, yet the server sees a peer that is not loopback."""
    trie = Path("/proc/net/fib_trie").read_text() if Path("/proc/net/fib_trie").exists() else ""
    for address in re.findall(r"\|-- (\d+\.\d+\.\d+\.\d+)\n\s+/32 host LOCAL", trie):
        if not address.startswith("127."):
            return address
    pytest.skip("this machine has no IPv4 address outside 127/8")


def test_sign_in_serves_loopback_clients_only(caplog, server):
    assert any("DEV SIGN-IN IS ON" in r.getMessage() for r in caplog.get_records("setup"))  # init --demo: on
    elsewhere = non_loopback_address()
    _, challenge = pkce()
    status, _, body = call(server, "GET", "/oidc/authorize?" + urlencode(authorization(server, challenge)),
                           source=elsewhere)
    assert (status, json.loads(body)["error"]) == (403, "forbidden")
    status, _, _ = call(server, "POST", "/oidc/authorize", {**authorization(server, challenge),
                                                             "idnat": NURSE}, source=elsewhere)
    assert status == 403
    code, verifier = sign_in(server)  # a code got on this host is no use from another one either
    status, _, _ = call(server, "POST", "/oidc/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": f"{server.settings.public_url}/",
        "client_id": "msante-web", "code_verifier": verifier}, source=elsewhere)
    assert status == 403
    rows = server.rows(select(audit.c.action, audit.c.source).where(audit.c.outcome == "denied",
                                                                     audit.c.action.like("oidc.%")))
    assert [(r["action"], r["source"]) for r in rows] == [
        ("oidc.authorize", elsewhere), ("oidc.authorize", elsewhere), ("oidc.token", elsewhere)]


@pytest.fixture
def sign_in_off(monkeypatch):
    """The server the test starts runs without [auth] dev_sign_in (list before `server`)."""
    monkeypatch.setenv("MSANTE_AUTH__DEV_SIGN_IN", "false")


def test_sign_in_is_off_unless_configured(caplog, sign_in_off, server, tmp_path, monkeypatch):
    _, challenge = pkce()
    status, _, body = call(server, "GET", "/oidc/authorize?" + urlencode(authorization(server, challenge)))
    assert (status, json.loads(body)["error"]) == (404, "no_issuer")
    assert not any("DEV SIGN-IN" in r.getMessage() for r in caplog.get_records("setup"))
    monkeypatch.delenv("MSANTE_AUTH__DEV_SIGN_IN")
    monkeypatch.setenv("MSANTE_SERVER__DATA_DIR", str(tmp_path / "plain"))
    assert cli.main(["init"]) == 0  # without --demo: a server that may face other hosts
    assert config.load(data_dir=str(tmp_path / "plain")).dev_sign_in is False


def test_plain_init_trusts_no_dev_issuer_and_a_trusting_server_says_so(caplog, server, tmp_path, monkeypatch):
    """Only `--demo` or `--dev-issuer` trust tokens signed with the key in the data directory."""
    assert any("DEV TOKEN ISSUER IS TRUSTED" in r.getMessage() for r in caplog.get_records("setup"))
    for name, flags, trusted in (("plain", [], False), ("dev", ["--dev-issuer"], True)):
        monkeypatch.setenv("MSANTE_SERVER__DATA_DIR", str(tmp_path / name))
        assert cli.main(["init", *flags]) == 0
        settings = config.load(data_dir=str(tmp_path / name))
        assert any(i.issuer == settings.public_url for i in settings.issuers) is trusted
        assert settings.dev_sign_in is False
