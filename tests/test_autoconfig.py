"""Thunderbird autoconfig against a running server: the document names the ports the server
listens on, and a mail client that follows it (trusting the CA it downloads from /mail/ca.crt,
logging in with the box address and an application password) reads and sends mail."""
from __future__ import annotations

import imaplib
import smtplib
import ssl
from xml.etree import ElementTree as ET

import pytest

import config
from tests.test_api import request, token_for

URGENTIST, BOX = "810002000015", "claire.leroy@msante.test"
PATHS = ["/.well-known/autoconfig/mail/config-v1.1.xml", f"/mail/config-v1.1.xml?emailaddress={BOX}"]


def servers(document: str) -> list[tuple[str, str, int, str, str, str]]:
    """(element, type, port, socketType, hostname, username) of each server the document offers."""
    provider = ET.fromstring(document).find("emailProvider")
    assert provider is not None
    return [(s.tag, s.get("type"), int(s.findtext("port")), s.findtext("socketType"), s.findtext("hostname"),
             s.findtext("username")) for s in provider if s.tag in ("incomingServer", "outgoingServer")]


def port(server, name: str) -> int:
    return int(server.listeners[name].rsplit(":", 1)[1])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("path", PATHS)
def test_the_document_names_the_running_servers_ports(database_url, server, path):
    status, headers, body = request(server, "GET", path)
    assert status == 200 and headers["content-type"].startswith("application/xml")
    assert [d.text for d in ET.fromstring(body).iter("domain")] == ["msante.test"]
    assert servers(body) == [
        ("incomingServer", "imap", port(server, "imaps"), "SSL", "localhost", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", port(server, "submissions"), "SSL", "localhost", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", port(server, "submission"), "STARTTLS", "localhost", "%EMAILADDRESS%")]
    assert BOX not in body  # the query is checked, never written back


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_client_that_follows_it_reads_and_sends(database_url, server):
    status, _, pem = request(server, "GET", "/mail/ca.crt")
    assert status == 200 and pem == server.ca_file.read_text()
    status, headers, empty = request(server, "HEAD", "/mail/ca.crt")  # how the web client asks whether there is one
    assert (status, empty, int(headers["content-length"])) == (200, "", len(pem))
    trust = ssl.create_default_context(cadata=pem)  # only what the page handed out
    _, _, document = request(server, "GET", PATHS[1])
    (_, _, imaps, _, host, _), (_, _, submissions, _, _, _), _ = servers(document)
    status, _, created = request(server, "POST", f"/api/mailboxes/{BOX}/app-passwords", token_for(server, URGENTIST),
                                 body={"label": "Thunderbird cabinet"})
    assert status == 201

    with smtplib.SMTP_SSL(host, submissions, context=trust, timeout=10) as smtp:
        smtp.login(BOX, created["password"])
        smtp.sendmail(BOX, [BOX], f"From: {BOX}\r\nTo: {BOX}\r\nSubject: autoconfig\r\n\r\nBonjour.\r\n".encode())
    imap = imaplib.IMAP4_SSL(host, imaps, ssl_context=trust, timeout=10)
    try:
        assert imap.login(BOX, created["password"])[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("query, status", [
    ("?emailaddress=someone@example.org", 404),  # not a domain of ours
    ("?emailaddress=not-an-address", 400),
    ("?emailaddress=a@b@msante.test", 400),
    (f"?emailaddress={'a' * 400}@msante.test", 400),
])
def test_other_addresses_are_refused(database_url, server, query, status):
    assert request(server, "GET", f"/mail/config-v1.1.xml{query}")[0] == status


def test_the_operator_names_what_clients_reach(tmp_path):
    """Behind a NAT the listeners' ports are not the clients': [clients] says what to announce; 0 offers nothing."""
    settings = config.load(data_dir=str(tmp_path), environ={
        "MSANTE_CLIENTS__HOST": "mail.msante.example.org", "MSANTE_CLIENTS__IMAPS": "993",
        "MSANTE_CLIENTS__SUBMISSION": "0"})
    from web.autoconfig import _document
    assert servers(_document(settings).decode()) == [
        ("incomingServer", "imap", 993, "SSL", "mail.msante.example.org", "%EMAILADDRESS%"),
        ("outgoingServer", "smtp", 4650, "SSL", "mail.msante.example.org", "%EMAILADDRESS%")]
    with pytest.raises(config.ConfigError, match="clients.host"):
        config.load(data_dir=str(tmp_path), environ={"MSANTE_CLIENTS__HOST": "mail.example.org:993"})
    with pytest.raises(config.ConfigError, match="clients.imaps"):
        config.load(data_dir=str(tmp_path), environ={"MSANTE_CLIENTS__IMAPS": "70000"})
