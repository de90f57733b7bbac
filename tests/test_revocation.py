"""Revocation: the dev CA's CRL, `msante certs revoke`, the last good CRL kept when a new one
is unusable, and revoked CPS and applicative certificates refused at SASL EXTERNAL by a
running server that was told nothing but the new CRL file."""
from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select

from certs import pki
from certs.pki import CertificateError
from certs.revocation import Revocations
from store.schema import audit
from tests.test_smtp import connect


def load(path) -> x509.Certificate:  # noqa: ANN001
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ca")
    ca = pki.create_ca(directory)
    pki.write_crl(ca)
    return ca


def test_revoke_adds_to_a_crl_signed_by_the_ca(ca, tmp_path):
    cps = load(pki.issue_cps(ca, idnat="810001045367", given_name="Jean", family_name="Dupont", out_dir=tmp_path)[0])
    revocations = Revocations((ca.crl_path,), [ca.certificate], 1)
    revocations.check(cps)  # not revoked yet
    assert pki.revoke(ca, cps.serial_number, x509.ReasonFlags.key_compromise)
    assert not pki.revoke(ca, cps.serial_number)  # once is enough
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cps.serial_number) is not None
    revocations.check(cps)  # the file changed, but nobody refreshed
    revocations.refresh()
    with pytest.raises(CertificateError, match=f"certificate {cps.serial_number:x} revoked on .* keyCompromise"):
        revocations.check(cps)
    with pytest.raises(CertificateError, match="revoked"):
        pki.verify_chain(cps, [ca.certificate], revocations=revocations)


def _sign(ca: pki.CA, key, *, next_update: datetime) -> bytes:  # noqa: ANN001
    """A CRL of `ca`'s name with no entries, signed by `key` (the CA's own, or a forger's)."""
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
           .last_update(min(datetime.now(timezone.utc), next_update - timedelta(hours=1))).next_update(next_update)
           .add_extension(x509.CRLNumber(99), critical=False).sign(key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_bad_new_crl_is_logged_and_the_last_good_one_kept(ca, tmp_path, caplog):
    cps = load(pki.issue_cps(ca, idnat="810001045367", given_name="Jean", family_name="Dupont", out_dir=tmp_path,
                             stem="kept")[0])
    pki.revoke(ca, cps.serial_number)
    path = tmp_path / "copy.crl"
    path.write_bytes(ca.crl_path.read_bytes())
    revocations = Revocations((path,), [ca.certificate], 1)
    forger = pki.create_ca(tmp_path / "forger")  # the same CA name, another key
    later = datetime.now(timezone.utc) + timedelta(days=1)
    bad = {
        "not a CRL": b"garbage",
        "not signed by a configured CA": _sign(ca, forger.key, next_update=later),
        "expired": _sign(ca, ca.key, next_update=datetime.now(timezone.utc) - timedelta(minutes=1)),
    }
    for reason, data in bad.items():
        path.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="msante.crl"):
            revocations.refresh()
        assert "new CRL refused" in caplog.text and reason in caplog.text
        with pytest.raises(CertificateError, match="revoked"):
            revocations.check(cps)
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="msante.crl"):
        revocations.refresh()
    assert "cannot read the CRL" in caplog.text
    with pytest.raises(CertificateError, match="revoked"):
        revocations.check(cps)
    path.write_bytes(_sign(ca, ca.key, next_update=later))  # a good, newer, empty one: the revocation is gone
    revocations.refresh()
    revocations.check(cps)


def test_a_configured_crl_that_cannot_be_used_stops_the_start(ca, tmp_path):
    with pytest.raises(CertificateError, match="cannot read"):
        Revocations((tmp_path / "missing.crl",), [ca.certificate], 1)
    other = pki.create_ca(tmp_path / "other", name="AUTRE AC")
    with pytest.raises(CertificateError, match="not signed by a configured CA"):
        Revocations((ca.crl_path,), [other.certificate], 1)


@pytest.fixture(autouse=True)
def quick_refresh(monkeypatch):
    """Set before `server` starts (autouse fixtures come first)."""
    monkeypatch.setenv("MSANTE_TLS__CRL_REFRESH", "1")


def external(server, listener: str, cert: tuple) -> int:
    try:
        client = connect(server, listener, cert=cert)
    except (smtplib.SMTPException, OSError):
        return -1
    with client:
        try:
            return client.auth("EXTERNAL", lambda challenge=None: "")[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


def test_revoked_cps_and_applicative_certificates_refused_at_external(server, tmp_path, capsys):
    server.cli("certs", "issue", "--kind", "cps", "--rpps", "10002000015", "--out", str(tmp_path))
    server.cli("certs", "issue", "--kind", "app", "--mailbox", "dpi.ch-saint-paul@msante.test", "--out", str(tmp_path))
    cps = (tmp_path / "cps-10002000015.crt", tmp_path / "cps-10002000015.key")
    app = (tmp_path / "app-dpi.ch-saint-paul.crt", tmp_path / "app-dpi.ch-saint-paul.key")
    assert external(server, "submission", cps) == 235 and external(server, "submissions", app) == 235
    capsys.readouterr()

    serial = f"{load(cps[0]).serial_number:x}"
    colons = ":".join(serial.rjust(len(serial) + len(serial) % 2, "0")[i:i + 2] for i in range(0, len(serial), 2))
    assert server.cli("certs", "revoke", colons, "--reason", "keyCompromise") == 0  # as OpenSSL prints it
    assert "running servers refuse it within 1 s" in capsys.readouterr().out
    started = time.monotonic()
    while external(server, "submission", cps) != 535:
        assert time.monotonic() - started < 15, "the revocation was not picked up"
        time.sleep(0.1)
    print(f"revoked CPS refused {time.monotonic() - started:.2f} s after `msante certs revoke` (tls.crl_refresh = 1)")
    assert external(server, "submissions", app) == 235  # only that one

    assert server.cli("certs", "revoke", str(load(app[0]).serial_number)) == 0  # decimal
    started = time.monotonic()
    while external(server, "submissions", app) != 535:
        assert time.monotonic() - started < 15, "the revocation was not picked up"
        time.sleep(0.1)

    refused = server.rows(select(audit.c.detail).where(audit.c.action == "auth.certificate",
                                                       audit.c.outcome == "failed"))
    reasons = [json.loads(r["detail"])["reason"] for r in refused]
    assert any("revoked" in r and "keyCompromise" in r for r in reasons)
    assert any(f"{load(app[0]).serial_number:x} revoked" in r for r in reasons)
    revokes = server.rows(select(audit.c.target).where(audit.c.action == "certs.revoke"))
    assert {r["target"] for r in revokes} == {serial, f"{load(app[0]).serial_number:x}"}


def test_serials_that_are_not_serials_and_a_damaged_crl(server, capsys):
    for text in ("zz", "0", "-5", "0x" + "f" * 41):
        assert server.cli("certs", "revoke", text) == 2
        assert "not a certificate serial number" in capsys.readouterr().err
    (server.settings.ca_dir / "ca.crl").write_text("damaged")
    assert server.cli("certs", "revoke", "0x1f") == 2
    assert "ca.crl is not a PEM CRL" in capsys.readouterr().err


def test_serving_without_a_crl_and_refusing_an_unusable_one(tmp_path, monkeypatch, capsys):
    """A data dir from before CRLs (`make run` keeps an existing `var`) has none configured and
    starts; a configured CRL that cannot be read stops `msante serve` with one clear line."""
    import config
    from msante import app, cli
    from tests.conftest import init_data_dir

    data_dir = tmp_path / "var"
    init_data_dir(data_dir, monkeypatch)
    generated = data_dir / "msante.toml"
    text = generated.read_text()
    generated.write_text(text[:text.index("[tls]")])
    (data_dir / "pki" / "ca.crl").unlink()
    settings = config.load(data_dir=str(data_dir))
    assert settings.crls == ()

    async def open_and_close() -> None:
        services = await app.Services.open(settings)
        await services.close()
    asyncio.run(open_and_close())

    generated.write_text(text)  # lists pki/ca.crl, which is gone
    capsys.readouterr()
    assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err
    assert "tls.crls" in error and "ca.crl: cannot read the CRL" in error
