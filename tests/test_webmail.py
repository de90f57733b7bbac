"""A mail of an INBOX read in the browser (mailserver/webmail.py), against a running server: sent
by SMTP with a PDF and an IHE XDM archive, read by the box's owner and by a delegate of an
organisational box, refused to anyone else (audited), attachments served only as downloads,
and \\Seen set for IMAP clients to see."""
from __future__ import annotations

import email.policy
import imaplib
import io
import zipfile
from email.message import EmailMessage

from sqlalchemy import select

from store.schema import audit
from tests.test_api import request, token_for
from tests.test_smtp import GP, URGENCES, URGENTIST, login

GP_IDNAT, URGENTIST_IDNAT, PHARMACIST_IDNAT = "810001045367", "810002000015", "810002000049"
PDF = b"%PDF-1.4\n% compte rendu\n"


def xdm() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("INDEX.HTM", "<html>index</html>")
        archive.writestr("IHE_XDM/SUBSET01/METADATA.XML", "<xml/>")
        archive.writestr("IHE_XDM/SUBSET01/DOC0001.PDF", PDF)
    return buffer.getvalue()


def send(server, to: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = GP, to, "Patiente Técher : CR de sortie"
    msg.set_content("Bonjour,\nle compte rendu est joint.\n")
    msg.add_alternative("<p>Bonjour, <script>alert(1)</script></p>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="compte-rendu.pdf")
    msg.add_attachment(xdm(), maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    client = login(server)
    client.sendmail(GP, [to], msg.as_bytes(policy=email.policy.SMTP))
    client.quit()


def test_read_a_mail_in_the_browser(server):
    send(server, URGENCES)
    path = f"/api/mailboxes/{URGENCES}/messages/1"
    status, _, mail = request(server, "GET", path, token_for(server, URGENTIST_IDNAT))  # a delegate of the box
    assert status == 200, mail
    assert (mail["from"], mail["subject"], mail["seen"]) == (GP, "Patiente Técher : CR de sortie", False)
    assert mail["text"] == "Bonjour,\nle compte rendu est joint.\n" and "script" not in str(mail)
    pdf, archive = mail["attachments"]
    assert (pdf["filename"], pdf["content_type"], pdf["documents"]) == ("compte-rendu.pdf", "application/pdf", None)
    assert [d["name"] for d in archive["documents"]] == [
        "INDEX.HTM", "IHE_XDM/SUBSET01/METADATA.XML", "IHE_XDM/SUBSET01/DOC0001.PDF"]

    status, headers, body = request(server, "GET", f"{path}/parts/{pdf['part']}", token_for(server, URGENTIST_IDNAT))
    assert status == 200 and body == PDF.decode()
    assert headers["content-type"] == "application/octet-stream"  # never rendered inline
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''compte-rendu.pdf"
    assert "sandbox" in headers["content-security-policy"]
    assert request(server, "GET", f"{path}/parts/9", token_for(server, URGENTIST_IDNAT))[0] == 404

    for idnat in (PHARMACIST_IDNAT, GP_IDNAT):  # not readers of the box: the same 403, audited
        status, _, refused = request(server, "GET", path, token_for(server, idnat))
        assert (status, refused["error"]) == (403, "forbidden")
    status, _, _ = request(server, "GET", "/api/mailboxes/nobody@msante.test/messages/1", token_for(server, GP_IDNAT))
    assert status == 403
    rows = server.rows(select(audit.c.actor, audit.c.outcome).where(audit.c.action == "mail.read"))
    assert sum(r["outcome"] == "denied" for r in rows) == 3 and sum(r["outcome"] == "ok" for r in rows) == 2

    assert request(server, "POST", f"{path}/seen", token_for(server, URGENTIST_IDNAT))[0] == 204
    assert request(server, "GET", path, token_for(server, URGENTIST_IDNAT))[2]["seen"] is True
    token = token_for(server, URGENTIST_IDNAT)
    host, port = server.listeners["imaps"].rsplit(":", 1)
    with imaplib.IMAP4_SSL("localhost", int(port), ssl_context=server.client_tls(), timeout=10) as imap:
        imap.authenticate("XOAUTH2", lambda _: f"user={URGENCES}\x01auth=Bearer {token}\x01\x01".encode())
        imap.select("INBOX", readonly=True)
        assert b"\\Seen" in imap.uid("FETCH", "1", "(FLAGS)")[1][0]  # mail clients agree


def test_the_acl_decides_as_for_imap(server):
    """A delegate whose rights on the box lack `s` reads but cannot mark read; one without `r`
    cannot read (`msante mailbox grant … --rights`)."""
    send(server, URGENCES)
    path = f"/api/mailboxes/{URGENCES}/messages/1"
    assert server.cli("mailbox", "grant", URGENCES, "--rpps", "10002000015", "--rights", "lr") == 0
    assert request(server, "GET", path, token_for(server, URGENTIST_IDNAT))[0] == 200
    assert request(server, "POST", f"{path}/seen", token_for(server, URGENTIST_IDNAT))[0] == 403
    missing = f"/api/mailboxes/{URGENTIST}/messages/99"
    assert request(server, "GET", missing, token_for(server, URGENTIST_IDNAT))[0] == 404
