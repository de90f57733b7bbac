"""Certificate revocation: the CRLs of the configured CAs, kept fresh, and the check against them.

Why checked here rather than by OpenSSL during the handshake (`VERIFY_CRL_CHECK_LEAF`):
- OpenSSL can add a CRL to a context but never drop one, and fails every handshake once
  the CRL it holds is past its nextUpdate, or for a CA without one: a late download would
  stop all mail between operators. Here the last good CRL stays in use until a better one
  arrives, and a bad new file is logged, not obeyed.
- A refusal inside the handshake is an alert the application never sees, so it could not
  be audited; here each refusal is (SASL EXTERNAL through `directory.authn`, the relay
  right after STARTTLS, the outbound queue before its first command).
- One object serves every listener and the outbound queue; contexts need no rebuilding.
The cost: a revoked certificate completes its handshake, and is refused at the first
step that uses it, before any command of the session is honoured.

Which CRL covers a certificate is decided by issuer name; a CRL is only used after its
signature is checked against one of the configured CAs.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from .pki import CertificateError

log = logging.getLogger("msante.crl")
MAX_CRL_BYTES = 64 * 1024 * 1024  # national CRLs run to megabytes, not to this


@dataclass(frozen=True)
class _Loaded:
    crl: x509.CertificateRevocationList
    stamp: tuple[int, int]  # (mtime_ns, size) of the file it was read from


class Revocations:
    """The CRLs at `paths`, read now (a configured CRL that cannot be used stops the server
    from starting, like a missing certificate would), then re-read by `refresh`."""

    def __init__(self, paths: tuple[Path, ...], cas: list[x509.Certificate], refresh_seconds: float) -> None:
        self._cas = cas
        self.refresh_seconds = refresh_seconds
        self._loaded: dict[Path, _Loaded] = {}
        for path in paths:
            loaded = self._read(path)
            if _expired(loaded.crl):
                log.warning("%s: CRL expired on %s; used until a newer one is published", path,
                            loaded.crl.next_update_utc)
            self._loaded[path] = loaded

    def check(self, cert: x509.Certificate) -> None:
        """Raise `CertificateError` if a CRL of `cert`'s issuer lists its serial number."""
        for loaded in self._loaded.values():
            if loaded.crl.issuer != cert.issuer:
                continue
            entry = loaded.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                try:
                    reason = f", {entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value}"
                except x509.ExtensionNotFound:
                    reason = ""
                raise CertificateError(f"certificate {cert.serial_number:x} revoked on "
                                       f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC{reason}")

    def refresh(self) -> None:
        """Re-read each CRL file that changed; keep the one in use if the new one is unusable."""
        loaded = dict(self._loaded)
        for path, current in self._loaded.items():
            try:
                stat = path.stat()
            except OSError as exc:
                log.error("%s: cannot read the CRL (%s); keeping the one of %s", path, exc,
                          current.crl.last_update_utc)
                continue
            if (stat.st_mtime_ns, stat.st_size) == current.stamp:
                continue
            try:
                new = self._read(path)
                if _expired(new.crl):
                    raise CertificateError(f"expired on {new.crl.next_update_utc}")
                if new.crl.last_update_utc < current.crl.last_update_utc:
                    raise CertificateError(f"older ({new.crl.last_update_utc}) than the one in use")
            except CertificateError as exc:
                log.error("%s: new CRL refused: %s; keeping the one of %s", path, exc, current.crl.last_update_utc)
                loaded[path] = _Loaded(current.crl, (stat.st_mtime_ns, stat.st_size))  # said once per change
                continue
            log.info("%s: CRL of %s loaded, %d revoked", path, new.crl.last_update_utc, len(new.crl))
            loaded[path] = new
        self._loaded = loaded  # one assignment: `check` on the event loop sees the old set or the new

    async def run(self, stop: asyncio.Event) -> None:
        """`refresh` every `refresh_seconds` (in a thread: parsing a national CRL takes a while)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.refresh_seconds)
            except asyncio.TimeoutError:
                await asyncio.to_thread(self.refresh)

    def _read(self, path: Path) -> _Loaded:
        try:
            stat = path.stat()
            if stat.st_size > MAX_CRL_BYTES:
                raise CertificateError(f"{path}: larger than {MAX_CRL_BYTES} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise CertificateError(f"{path}: cannot read the CRL: {exc.strerror or exc}") from None
        try:
            crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                   else x509.load_der_x509_crl(data))
        except ValueError as exc:
            raise CertificateError(f"{path}: not a CRL: {exc}") from None
        issuers = [ca for ca in self._cas if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in issuers):
            raise CertificateError(f"{path}: the CRL is not signed by a configured CA "
                                   f"({crl.issuer.rfc4514_string()})")
        return _Loaded(crl, (stat.st_mtime_ns, stat.st_size))


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _expired(crl: x509.CertificateRevocationList) -> bool:
    return crl.next_update_utc is not None and crl.next_update_utc < datetime.now(timezone.utc)
