"""Sniffing a document's type from its bytes, and the names it is shown under (sans-IO)."""
from __future__ import annotations

import pytest

from instant.filetypes import MAX_NAME_CHARS, clean_name, sniff


@pytest.mark.parametrize("data, expected", [
    (b"%PDF-1.7\n...", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    (b"<!DOCTYPE html><p>%PDF-1.4", None),  # HTML that holds a PDF header further on: a polyglot
    (b" %PDF-1.4", None),  # readers skip junk before the header; we do not
    (b"GIF89a", None), (b"PK\x03\x04", None), (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None), (b"", None),
])
def test_sniff(data, expected):
    assert sniff(data) == expected


@pytest.mark.parametrize("name, kind, expected", [
    ("Compte rendu.pdf", "application/pdf", "Compte rendu.pdf"),
    ("C:\\Users\\dr\\scan.PDF", "application/pdf", "scan.PDF"),
    ("../../etc/passwd", "application/pdf", "passwd.pdf"),
    ("photo.jpeg", "image/jpeg", "photo.jpeg"),
    ("photo.png", "image/jpeg", "photo.png.jpg"),  # the name says PNG, the bytes JPEG: the bytes win
    ("a\x00b\"c\r\n.pdf", "application/pdf", "a_b_c__.pdf"),
    ("facture\u202efdp.exe", "application/pdf", "facture_fdp.exe.pdf"),
    ("...", "image/png", "document.png"),
])
def test_clean_name(name, kind, expected):
    assert clean_name(name, kind) == expected


def test_long_names_keep_their_extension():
    name = clean_name("x" * 1000 + ".pdf", "application/pdf")
    assert len(name) == MAX_NAME_CHARS and name.endswith(".pdf")
