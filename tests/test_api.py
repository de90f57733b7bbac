"""The HTTPS listener end to end: a running server, real TLS, http.client as the peer."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import replace

import pytest

import web.http
from certs.tokens import DevIssuer
from msante import demo
from tests import scrape

GP = "8" + demo.LOGIN_RPPS  # Dr Jean Dupont
URGENTIST = "810002000015"  # Dr Claire Leroy, delegate of the emergency department's box


def request(server, method: str, path: str, token: str | None = None, *, context: ssl.SSLContext | None = None,
            body: dict | bytes | None = None):
    host, port = server.listeners["https"].rsplit(":", 1)
    conn = http.client.HTTPSConnection("localhost", int(port), context=context or server.client_tls(), timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, headers=headers, body=json.dumps(body) if isinstance(body, dict) else body)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    ctype = response.getheader("content-type", "")
    return response.status, dict(response.getheaders()), json.loads(body) if "json" in ctype else body.decode()


def raw_tls(server) -> ssl.SSLSocket:
    """A TLS connection to the https listener, for bytes no HTTP client would send."""
    port = int(server.listeners["https"].rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return server.client_tls().wrap_socket(sock, server_hostname="localhost")


@pytest.fixture
def http_limits(request, monkeypatch):
    """Tighter HTTPS limits for the server the test starts (list this fixture before `server`)."""
    monkeypatch.setattr(web.http, "DEFAULT", replace(web.http.DEFAULT, **request.param))


def token_for(server, idnat: str, **kwargs) -> str:
    issuer = DevIssuer.load(server.data_dir, server.settings.public_url)
    return issuer.issue_access_token(idnat=idnat, given_name="X", family_name="Y", **kwargs)


def test_health_metrics_and_wellknown(server):
    before = scrape.of(server)
    status, headers, body = request(server, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert headers["strict-transport-security"].startswith("max-age=")
    status, _, jwks = request(server, "GET", "/.well-known/jwks.json")
    assert status == 200 and jwks["keys"][0]["kty"] == "RSA" and "d" not in jwks["keys"][0]
    status, _, disco = request(server, "GET", "/.well-known/openid-configuration")
    assert disco["issuer"] == server.settings.public_url
    assert disco["jwks_uri"].endswith("/.well-known/jwks.json")
    status, _, spec = request(server, "GET", "/api/openapi.json")
    assert status == 200 and "/api/directory/search" in spec["paths"]
    status, headers, text = request(server, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    after = scrape.samples(text)
    healthz = dict(route="/healthz", status="200")
    assert scrape.value(after, "msante_http_requests_total", **healthz) == \
        scrape.value(before, "msante_http_requests_total", **healthz) + 1
    assert scrape.value(after, "msante_directory_professionals") == 5


def test_directory_requires_a_valid_token(server):
    status, headers, body = request(server, "GET", "/api/directory/search?q=leroy")
    assert status == 401 and body["error"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    for bad, code in [
        (token_for(server, GP, ttl=-120), "expired"),
        (token_for(server, GP, audience="someone-else"), "wrong_audience"),
        (token_for(server, "899999999999"), "unknown_identity"),  # valid signature, not in the directory
        ("not.a.token", "malformed"),
    ]:
        status, headers, body = request(server, "GET", "/api/directory/search?q=leroy", bad)
        assert status == 401, body
        assert body["error"] == "invalid_token"
        assert f'error_description="{code}"' in headers["www-authenticate"]


def test_search_entry_and_mailboxes(server):
    token = token_for(server, GP)
    status, _, page = request(server, "GET", "/api/directory/search?q=leroy", token)
    assert status == 200
    assert [item["idnat"] for item in page["items"] if "idnat" in item] == [URGENTIST]
    status, _, page = request(server, "GET", "/api/directory/search?profession=60&kind=professional&per_page=1",
                              token)
    assert status == 200 and len(page["items"]) == 1 and page["next"] == 2
    status, _, page2 = request(server, "GET", "/api/directory/search?profession=60&kind=professional&per_page=1"
                                              "&page=2", token)
    assert page2["items"] and page2["items"][0] != page["items"][0]
    status, _, entry = request(server, "GET", f"/api/directory/entries/{URGENTIST}", token)
    assert status == 200 and entry["family_name"] == "LEROY"
    status, _, boxes = request(server, "GET", f"/api/directory/professionals/{URGENTIST}/mailboxes", token)
    addresses = {b["address"] for b in boxes["items"]}
    assert addresses == {"claire.leroy@msante.test", "urgences.ch-saint-paul@msante.test"}
    status, _, body = request(server, "GET", "/api/directory/entries/800000000000", token)
    assert status == 404 and body["error"] == "not_found"


@pytest.mark.parametrize("query, code", [
    ("", "missing_filter"),
    ("q=a&per_page=1000", "bad_per_page"),
    ("q=a&page=0", "bad_page"),
    ("q=a&kind=planet", "bad_kind"),
    ("q=" + "a" * 201, "too_long"),
    ("q=a&page=%C2%B2", "bad_page"),  # "²": str.isdigit() says yes, int() says no
    ("q=a&page=200&per_page=100", "bad_search"),  # past the result window
    ("q=%25%25%25_", "bad_search"),  # folds to nothing: it listed everyone
    ("city=%25%25", "bad_search"),
    ("identifier=%00", "bad_identifier"),  # PostgreSQL refuses NUL: it was a 500 there
    ("profession=%01", "bad_profession"),
])
def test_bad_queries_are_400(server, query, code):
    status, _, body = request(server, "GET", f"/api/directory/search?{query}", token_for(server, GP))
    assert (status, body["error"]) == (400, code)


@pytest.mark.parametrize("body", [b'{"patient": ' + b"1" * 5000 + b"}", b"[" * 100_000])
def test_json_bodies_python_cannot_read_are_400(server, body):
    """Integers over 4,300 digits (int() refuses them) and bodies nested past the recursion limit."""
    status, _, answer = request(server, "POST", "/api/circles", token_for(server, GP), body=body)
    assert (status, answer["error"]) == (400, "bad_json")
    status, _, answer = request(server, "GET", "/api/circles/%C2%B2", token_for(server, GP))
    assert (status, answer["error"]) == (404, "not_found")


@pytest.mark.parametrize("http_limits", [{"request_timeout": 1.0}], indirect=True)
def test_a_request_trickling_in_is_cut_at_its_deadline(http_limits, server):
    """Slowloris: a header line every 0.2 s, never the blank line that ends the head. Each line
    restarted the 30 s idle timeout; the request's deadline now runs from its first byte."""
    sock = raw_tls(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")
    started, answer = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - started < 10 and not answer:
        try:
            sock.sendall(b"x-slow: 1\r\n")
            answer = sock.recv(4096) or b"(closed)"
        except TimeoutError:
            continue
        except OSError as exc:  # cut without an answer
            answer = repr(exc).encode()
    elapsed = time.monotonic() - started
    sock.close()
    print(f"trickling request cut after {elapsed:.2f} s (deadline 1 s)")
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer, answer
    assert elapsed < 5


def test_unknown_route_and_method(server):
    status, _, body = request(server, "GET", "/api/nothing", token_for(server, GP))
    assert (status, body["error"]) == (404, "not_found")
    status, headers, body = request(server, "POST", "/healthz")
    assert status == 405 and headers["allow"] == "GET"


def test_audit_trail_for_admins_only(server):
    status, _, body = request(server, "GET", "/api/audit", token_for(server, GP))
    assert (status, body["error"]) == (403, "forbidden")
    request(server, "GET", "/api/directory/search?q=payet", token_for(server, GP, ttl=-120))  # a failure
    admin = token_for(server, demo.ADMIN_IDNAT)
    status, _, rows = request(server, "GET", "/api/audit?limit=1000", admin)
    assert status == 200
    actions = [(r["actor"], r["action"], r["outcome"]) for r in rows["items"]]
    assert (GP, "audit.read", "denied") in actions
    assert ("-", "auth.token", "failed") in actions
    failed = [r for r in rows["items"] if r["action"] == "auth.token" and r["outcome"] == "failed"]
    assert failed[-1]["detail"]["reason"] == "expired" and failed[-1]["source"] == "127.0.0.1"
    status, _, rows = request(server, "GET", "/api/audit?action=audit.read", admin)
    assert {r["action"] for r in rows["items"]} == {"audit.read"}


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_tls_versions_refused(server):
    context = server.client_tls()
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client try: the refusal must come from the server
    with pytest.raises(ssl.SSLError):
        request(server, "GET", "/healthz", context=context)


def test_my_mailboxes_and_app_passwords(server):
    import smtplib

    token = token_for(server, URGENTIST)
    status, _, boxes = request(server, "GET", "/api/mailboxes", token)
    assert {(b["address"], b["role"]) for b in boxes["items"]} == {
        ("claire.leroy@msante.test", "owner"), ("urgences.ch-saint-paul@msante.test", "delegate")}
    path = "/api/mailboxes/urgences.ch-saint-paul@msante.test/app-passwords"
    status, _, created = request(server, "POST", path, token, body={"label": "Poste urgences 3"})
    assert status == 201 and len(created["password"].replace("-", "")) == 28
    status, _, body = request(server, "POST", path, token, body={"label": "Poste urgences 3"})
    assert (status, body["error"]) == (400, "refused")  # one password per label
    status, _, body = request(server, "POST", "/api/mailboxes/jean.dupont@msante.test/app-passwords", token,
                              body={"label": "x"})
    assert (status, body["error"]) == (403, "forbidden") and "not a mailbox you may use" in body["message"]
    status, _, body = request(server, "POST", "/api/mailboxes/nobody@msante.test/app-passwords", token,
                              body={"label": "x"})
    assert (status, body["error"]) == (403, "forbidden")  # a box that does not exist: the same answer
    status, _, listed = request(server, "GET", path, token)
    assert [item["label"] for item in listed["items"]] == ["Poste urgences 3"]
    assert "password" not in listed["items"][0]

    host, port = server.listeners["submissions"].rsplit(":", 1)
    client = smtplib.SMTP_SSL("localhost", int(port), context=server.client_tls(), timeout=10)
    assert client.login("urgences.ch-saint-paul@msante.test", created["password"])[0] == 235
    client.quit()

    status, _, _ = request(server, "DELETE", path + "/Poste%20urgences%203", token)
    assert status == 204
    status, _, listed = request(server, "GET", path, token)
    assert listed["items"] == []


@pytest.mark.parametrize("size", [20 * 1024, 60 * 1024, 90 * 1024])
def test_a_head_over_the_header_limit_is_431_even_when_it_arrives_whole(server, size):
    """h11 checks max_header_bytes only while the head is incomplete: a head sent in one go
    (up to a read's 64 KiB and more) was accepted up to ~100 KiB, past the 16 KiB limit."""
    sock = raw_tls(server)
    head = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: " + b"a" * size + b"\r\n\r\n"
    sock.sendall(head)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
