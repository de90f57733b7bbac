"""The trust space: the national white-list format, IDN domains, operator certificate DNs,
replacement and live reload."""

import pytest
from cryptography import x509

from certs import pki
from certs.dn import DnError, dn_of, parse_dn
from mailserver.trust import TrustListError, TrustSpace, import_list, parse_list
from store import db

def write(tmp_path, domains, name="liste.xml"):
    """The list's format; an entry is a name, or (name, DN…) as the national list repeats a
    `Domaine` per operator certificate."""
    path = tmp_path / name
    names = "".join(
        f"<Domaine><Nom>{d}</Nom></Domaine>" if isinstance(d, str) else
        "<Domaine><Nom>" + d[0] + "</Nom><Description>x</Description>" +
        "".join(f"<DNCertificatOperateur>{dn}</DNCertificatOperateur>" for dn in d[1:]) +
        "<DateMAJ>2026-11-23</DateMAJ></Domaine>" for d in domains)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n'
                    f'<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">{names}</ListeBlanche>',
                    encoding="utf-8")
    return path


def test_national_format_parses_with_idn_in_a_label_form(tmp_path):
    path = write(tmp_path, ["msante.test", "autre-operateur.test", "chu-exemple.test", "hôpital-réunion.test"])
    assert list(parse_list(path)) == sorted(["msante.test", "autre-operateur.test", "chu-exemple.test",
                                         "xn--hpital-runion-ihb1n.test"])


@pytest.mark.parametrize("text, message", [
    ("<ListeBlanche", "not well-formed"),
    ("<ListeBlanche xmlns='urn:other'><Domaine><Nom>a.test</Nom></Domaine></ListeBlanche>", "no //Domaine/Nom"),
    ('<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"><Domaine><Nom>a..b</Nom></Domaine>'
     "</ListeBlanche>", "not a valid domain"),
])
def test_bad_lists_refused(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(TrustListError, match=message):
        parse_list(path)


async def test_import_replaces_and_a_running_server_reloads(tmp_path, database_url):
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine)
        space = TrustSpace(engine, ("msante.test",))
        assert await space.contains("msante.test")  # our own domains always
        assert not await space.contains("chu-exemple.test")
        assert await import_list(engine, write(tmp_path, ["chu-exemple.test", "hôpital-réunion.test"])) == (2, 0)
        await space.reload()
        assert await space.contains("CHU-exemple.test") and await space.contains("hôpital-réunion.test")
        assert await import_list(engine, write(tmp_path, ["chu-exemple.test"])) == (0, 1)
        await space.reload()
        assert not await space.contains("hôpital-réunion.test")
    finally:
        await engine.dispose()


OPERATOR_DN = "CN=mail.operateur.test,OU=31598513500187,O=Operateur Exemple,ST=Paris (75),C=FR"


def test_a_domain_under_several_operator_certificates(tmp_path):
    other = "CN=relais.autre.test,O=Autre,C=FR"
    listed = parse_list(write(tmp_path, [("chu-exemple.test", OPERATOR_DN), ("CHU-exemple.test", other),
                                         ("hôpital-réunion.test", OPERATOR_DN), "sans-dn.test"]))
    assert listed == {"chu-exemple.test": {OPERATOR_DN, other}, "sans-dn.test": frozenset(),
                      "xn--hpital-runion-ihb1n.test": {OPERATOR_DN}}


@pytest.mark.parametrize("written", [
    OPERATOR_DN,
    "C=FR, ST=Paris (75), O=Operateur Exemple, OU=31598513500187, CN=mail.operateur.test",  # OpenSSL's order
    "cn = MAIL.operateur.test ; ou=31598513500187;o=Operateur  Exemple;st=Paris (75);c=fr",
    "CN=mail.operateur.test,OU=31598513500187,O=Operateur\\20Exemple,ST=Paris \\2875\\29,2.5.4.6=FR",
])
def test_dn_written_any_way_matches_the_certificate(tmp_path, written):
    ca = pki.create_ca(tmp_path)
    subject = x509.Name.from_rfc4514_string(OPERATOR_DN)
    cert = x509.load_pem_x509_certificate(pki.issue_server(ca, ["mail.operateur.test"], tmp_path)[0].read_bytes())
    assert dn_of(subject) == parse_dn(written)
    assert dn_of(cert.subject) != parse_dn(written)  # the dev server certificate: CN and C only
    assert parse_dn(written) != parse_dn(OPERATOR_DN.replace("Exemple", "Autre"))


@pytest.mark.parametrize("text", ["", "CN", "CN=", "CN=x,,O=y", "XX=y", "CN=a\\", "CN=a\\q", "CN=" + "x" * 1100])
def test_bad_dns_refused(text):
    with pytest.raises(DnError):
        parse_dn(text)


def test_a_bad_dn_in_the_list_refuses_the_file(tmp_path):
    with pytest.raises(TrustListError, match="chu-exemple.test: DNCertificatOperateur"):
        parse_list(write(tmp_path, [("chu-exemple.test", "CN=x,,C=FR")]))


async def test_operator_certificates_stored_and_reloaded(tmp_path, database_url):
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine)
        space = TrustSpace(engine, ("msante.test",))
        await import_list(engine, write(tmp_path, [("chu-exemple.test", OPERATOR_DN), "sans-dn.test"]))
        await space.reload()
        assert await space.operators("CHU-exemple.test") == {parse_dn(OPERATOR_DN)}
        assert await space.operators("sans-dn.test") == frozenset()
        # the same domains, another operator's certificate only: a running server sees the move
        moved = "CN=relais.autre.test,O=Autre,C=FR"
        assert await import_list(engine, write(tmp_path, [("chu-exemple.test", moved), "sans-dn.test"])) == (0, 0)
        await space.reload()
        assert await space.operators("chu-exemple.test") == {parse_dn(moved)}
    finally:
        await engine.dispose()
