"""Mail clients that configure themselves: Thunderbird's autoconfig document (the
"config-v1.1.xml" format, also read by K-9/Thunderbird for Android, Evolution and others),
and the dev CA's certificate for clients to trust.

Thunderbird asks `https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=…` and then
`https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml`; both are answered here, for
the domains this server hosts. The user name is the mailbox address itself (`%EMAILADDRESS%`,
filled in by the client), and the password an application password. No address given in the
query is ever written back into the document: it is only checked to belong to our domains.

Mail clients that do not read autoconfig find the same servers by DNS (RFC 6186 SRV records,
in the README) or by hand (the web client's "Connecter un logiciel de messagerie" page).
"""
from __future__ import annotations

from xml.etree import ElementTree as ET

from config import Settings

from .http import HttpError, Request, Response
from .router import Router

MAX_ADDRESS_CHARS = 320  # RFC 5321 §4.5.3.1: 64 for the local part, @, 255 for the domain
AUTHENTICATION = "password-cleartext"  # SASL PLAIN inside TLS, with an application password


class Autoconfig:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._document = _document(settings)
        self._ca = settings.ca_dir / "ca.crt"

    def register(self, router: Router) -> None:
        router.add("GET", "/.well-known/autoconfig/mail/config-v1.1.xml", self.config)
        router.add("GET", "/mail/config-v1.1.xml", self.config)
        router.add("GET", "/mail/ca.crt", self.ca)

    async def config(self, request: Request) -> Response:
        address = request.arg("emailaddress")
        if address is not None:
            if len(address) > MAX_ADDRESS_CHARS or address.count("@") != 1:
                raise HttpError(400, "bad_address", "emailaddress must be one mail address")
            domain = address.rpartition("@")[2].strip().lower()
            if domain not in self._settings.domains:
                raise HttpError(404, "not_hosted", "this server hosts no mail for that domain")
        return Response(200, self._document, "application/xml; charset=utf-8",
                        {"cache-control": "public, max-age=3600"})

    async def ca(self, _request: Request) -> Response:
        """The dev CA (`msante init`), for clients to trust; absent where real certificates are used."""
        try:
            pem = self._ca.read_bytes()
        except FileNotFoundError:
            raise HttpError(404, "no_dev_ca", "this server uses no dev certificate authority") from None
        return Response(200, pem, "application/x-pem-file",
                        {"content-disposition": 'attachment; filename="msante-ca.crt"'})


def _document(settings: Settings) -> bytes:
    clients = settings.clients
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=settings.domains[0])
    for domain in settings.domains:
        ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"MSSanté ({settings.domains[0]})"
    ET.SubElement(provider, "displayShortName").text = "MSSanté"
    servers = [("incomingServer", "imap", clients.imaps, "SSL"),
               ("outgoingServer", "smtp", clients.submissions, "SSL"),  # implicit TLS first (RFC 8314 §3.3)
               ("outgoingServer", "smtp", clients.submission, "STARTTLS")]
    for tag, kind, port, socket in servers:
        if not port:
            continue
        server = ET.SubElement(provider, tag, type=kind)
        for name, value in (("hostname", clients.host), ("port", str(port)), ("socketType", socket),
                            ("authentication", AUTHENTICATION), ("username", "%EMAILADDRESS%")):
            ET.SubElement(server, name).text = value
    documentation = ET.SubElement(provider, "documentation", url=f"{settings.public_url}/#/logiciels")
    ET.SubElement(documentation, "descr", lang="fr").text = (
        "Le mot de passe est un mot de passe d'application, créé dans le client web (Connecter un logiciel de "
        "messagerie).")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
