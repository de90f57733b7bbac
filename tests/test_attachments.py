"""Documents in care circles end to end: uploads and downloads over real HTTPS (http.client),
the message that carries them over a real websocket. Circle 1 of the demo holds Jean Dupont
and Sophie Hoarau; Marie Grondin is outside it."""
from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid

import pytest
from sqlalchemy import select

from store.schema import attachment_contents, audit, circle_attachments
from tests.test_api import http_limits, raw_tls, token_for  # noqa: F401 - http_limits is a fixture
from tests.test_instant_ws import CIRCLE, GP, NURSE, PHARMACIST, connect  # noqa: F401 - a fixture

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
HTML_AS_PDF = b"<!doctype html><html><script>alert(document.cookie)</script></html>"


def fetch(server, method: str, path: str, idnat: str, body: bytes | None = None,
         content_type: str = "application/pdf") -> tuple[int, dict, bytes]:
    host, port = server.listeners["https"].rsplit(":", 1)
    conn = http.client.HTTPSConnection("localhost", int(port), context=server.client_tls(), timeout=15)
    headers = {"Authorization": f"Bearer {token_for(server, idnat)}"}
    if body is not None:
        headers["Content-Type"] = content_type  # what the client claims: never believed
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def upload(server, idnat: str, data: bytes, name: str = "compte-rendu.pdf", circle: int = CIRCLE, **kwargs):
    from urllib.parse import quote
    status, headers, body = fetch(server, "POST", f"/api/circles/{circle}/attachments?name={quote(name)}", idnat,
                                 data, **kwargs)
    return status, json.loads(body)


def audit_rows(server, action: str) -> list[dict]:
    return server.rows(select(audit.c.actor, audit.c.target, audit.c.outcome, audit.c.detail)
                       .where(audit.c.action == action).order_by(audit.c.id))


def test_upload_download_and_audit(server):
    status, attachment = upload(server, GP, PDF, "Compte rendu d'hospitalisation.pdf")
    assert status == 201
    assert (attachment["name"], attachment["type"], attachment["size"]) == (
        "Compte rendu d'hospitalisation.pdf", "application/pdf", len(PDF))
    status, headers, data = fetch(server, "GET", f"/api/circles/{CIRCLE}/attachments/{attachment['id']}", NURSE)
    assert (status, data) == (200, PDF)
    assert headers["content-type"] == "application/pdf"
    assert headers["content-disposition"].startswith('attachment; filename="Compte rendu d\'hospitalisation.pdf"')
    assert "filename*=UTF-8''Compte%20rendu%20d%27hospitalisation.pdf" in headers["content-disposition"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    uploads, downloads = audit_rows(server, "circle.attachment.upload"), audit_rows(server, "circle.attachment.download")
    assert [(r["actor"], r["target"], r["outcome"]) for r in uploads] == [(GP, str(CIRCLE), "ok")]
    assert json.loads(uploads[0]["detail"])["attachment"] == attachment["id"]
    assert [(r["actor"], r["outcome"]) for r in downloads] == [(NURSE, "ok")]
    status, _, _ = fetch(server, "GET", f"/api/circles/{CIRCLE}/attachments/{attachment['id'] + 1}", NURSE)
    assert status == 404
    spec = json.loads(fetch(server, "GET", "/api/openapi.json", GP)[2])
    assert {"/api/circles/{id}/attachments", "/api/circles/{id}/attachments/{aid}"} <= set(spec["paths"])


def test_the_type_comes_from_the_bytes(server):
    status, error = upload(server, GP, HTML_AS_PDF, "ordonnance.pdf")  # HTML under a PDF name and type
    assert (status, error["error"]) == (415, "unsupported_type")
    status, error = upload(server, GP, b"", "vide.pdf")
    assert status == 415
    status, image = upload(server, GP, PNG, "plaie.jpg", content_type="text/html")  # a PNG, whatever it claims
    assert (status, image["type"], image["name"]) == (201, "image/png", "plaie.jpg.png")
    status, _, data = fetch(server, "GET", f"/api/circles/{CIRCLE}/attachments/{image['id']}", GP)
    assert status == 200 and data == PNG
    assert [r["outcome"] for r in audit_rows(server, "circle.attachment.upload")] == ["denied", "denied", "ok"]
    assert server.rows(select(circle_attachments.c.id)) == [{"id": image["id"]}]


def test_names_lose_paths_controls_and_overrides(server):
    status, attachment = upload(server, GP, PDF, "../../etc/facture\u202efdp.exe")
    assert status == 201 and attachment["name"] == "facture_fdp.exe.pdf"


@pytest.fixture
def small_attachments(monkeypatch):
    """A 4 KiB attachment limit for the server the test starts (list it before `server`)."""
    monkeypatch.setenv("MSANTE_INSTANT__MAX_ATTACHMENT", "4096")


def test_over_the_limit_is_413(small_attachments, server):
    status, error = upload(server, GP, PDF + b"0" * 5000)
    assert (status, error["error"]) == (413, "too_large")
    assert upload(server, GP, PDF)[0] == 201
    # the limit is the route's: other API bodies keep theirs
    assert server.rows(select(circle_attachments.c.size)) == [{"size": len(PDF)}]


def test_outsiders_neither_upload_nor_download(server):
    status, error = upload(server, PHARMACIST, PDF)
    assert (status, error["error"]) == (403, "forbidden")
    _, attachment = upload(server, GP, PDF)
    status, _, data = fetch(server, "GET", f"/api/circles/{CIRCLE}/attachments/{attachment['id']}", PHARMACIST)
    assert status == 403 and PDF not in data
    status, _, _ = fetch(server, "GET", f"/api/circles/{CIRCLE}/attachments/{attachment['id']}", "")
    assert status == 401
    denied = [(r["actor"], r["outcome"]) for action in ("circle.attachment.upload", "circle.attachment.download")
              for r in audit_rows(server, action) if r["outcome"] == "denied"]
    assert denied == [(PHARMACIST, "denied"), (PHARMACIST, "denied")]


def test_the_same_bytes_are_stored_once(server):
    first, second = upload(server, GP, PDF, "a.pdf")[1], upload(server, NURSE, PDF, "b.pdf")[1]
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    assert len(server.rows(select(attachment_contents.c.id))) == 1
    assert len(server.rows(select(circle_attachments.c.id))) == 2


async def test_a_message_carries_attachments_to_the_other_members(server, connect):
    _, attachment = await asyncio.to_thread(upload, server, GP, PDF, "bilan.pdf")
    _, nurses = await asyncio.to_thread(upload, server, NURSE, PNG, "plaie.png")
    gp, nurse = await connect(GP), await connect(NURSE)
    await nurse.request(type="subscribe", circle=CIRCLE)
    for refused in ([nurses["id"]], [attachment["id"] + 100], [attachment["id"], attachment["id"]], "1"):
        answer = await gp.request(type="post", circle=CIRCLE, client_id=str(uuid.uuid4()), text="Bilan",
                                  attachments=refused)  # another's upload, unknown, twice, not a list
        assert answer["type"] == "error" and answer["code"] in ("no_such_attachment", "bad_frame"), answer
    ack = await gp.request(type="post", circle=CIRCLE, client_id="c1", text="Bilan joint",
                           attachments=[attachment["id"]])
    assert ack["type"] == "ack" and ack["seq"] == 1  # the refused posts gave their seqs back
    message = await nurse.expect(type="message", seq=1)
    assert message["attachments"] == [{"id": attachment["id"], "name": "bilan.pdf", "type": "application/pdf",
                                       "size": len(PDF)}]
    history = await nurse.request(type="history", circle=CIRCLE)
    assert history["messages"][0]["attachments"] == message["attachments"]
    again = await gp.request(type="post", circle=CIRCLE, client_id="c2", text="encore",
                             attachments=[attachment["id"]])
    assert again["code"] == "no_such_attachment"  # posted once, carried by one message
    retry = await gp.request(type="post", circle=CIRCLE, client_id="c1", text="Bilan joint",
                             attachments=[attachment["id"]])
    assert (retry["type"], retry["duplicate"]) == ("ack", True)
    status, _, data = await asyncio.to_thread(
        fetch, server, "GET", f"/api/circles/{CIRCLE}/attachments/{attachment['id']}", NURSE)
    assert (status, data) == (200, PDF)


@pytest.mark.parametrize("http_limits", [{"max_body_bytes": 1024, "request_timeout": 1.0}], indirect=True)
def test_an_upload_has_time_in_proportion_to_its_limit(small_attachments, http_limits, server):
    """4 KiB allowed where bodies get 1 KiB a second: the upload may take 4 s, so one sent
    over 2 s is taken, where any other request would have had 1 s (408)."""
    body = PDF + b"0" * (3000 - len(PDF))
    sock = raw_tls(server)
    sock.sendall((f"POST /api/circles/{CIRCLE}/attachments?name=lent.pdf HTTP/1.1\r\nHost: localhost\r\n"
                  f"Authorization: Bearer {token_for(server, GP)}\r\nContent-Length: {len(body)}\r\n\r\n").encode())
    for start in range(0, len(body), 750):  # four pieces, half a second apart
        sock.sendall(body[start:start + 750])
        time.sleep(0.5)
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
