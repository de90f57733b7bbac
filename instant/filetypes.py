"""What a care circle's document is, read from its first bytes, never from what the client
says: a browser labels by file extension, and an HTML page named `cr.pdf` served back as
`application/pdf` by trust would be one content-type confusion away from running script on
our origin. Only the types clinicians exchange are taken (PDF, PNG, JPEG); anything else is
refused, so nothing that a browser could render as a page is ever stored.
"""
from __future__ import annotations

import re
import unicodedata

# Signatures at offset 0. PDF: ISO 32000-1 §7.5.2 puts the header `%PDF-` on the first line
# (readers tolerate junk before it; we do not, so no polyglot passes). PNG: RFC 2083 §3.1.
# JPEG: SOI then the first marker (ITU T.81 B.1.1.2).
SIGNATURES = ((b"%PDF-", "application/pdf"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
EXTENSIONS = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg"}
MAX_NAME_CHARS = 255  # most file systems' limit on one name
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|\u202a-\u202e\u2066-\u2069]')  # controls, paths, bidi overrides


def sniff(data: bytes) -> str | None:
    """The media type of `data` if it is one we take, else None."""
    return next((kind for magic, kind in SIGNATURES if data.startswith(magic)), None)


def clean_name(name: str, content_type: str) -> str:
    """A name safe to show and to put in Content-Disposition: the last path segment, without
    controls or bidirectional overrides (`facture\u202efdp.exe`), NFC, bounded; the extension of
    the sniffed type is added when the name does not end with it."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip(" .") or "document"
    extension = EXTENSIONS[content_type]
    if name.lower().endswith(extension) or (content_type == "image/jpeg" and name.lower().endswith(".jpeg")):
        name, extension = name.rpartition(".")[0], "." + name.rpartition(".")[2]
    return name[:MAX_NAME_CHARS - len(extension)] + extension
