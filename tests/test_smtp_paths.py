"""MAIL FROM and RCPT TO paths: the regular expression that reads the common `<local@domain>`
(mailserver/smtp.py `_PLAIN_PATH`) gives what the standard library's parser, which reads every
other form, gives for the same argument: the same address and the same rest (the ESMTP
parameters), and leaves to it everything it does not take."""
from __future__ import annotations

from email._header_value_parser import get_angle_addr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.smtp import _PLAIN_PATH


def stdlib(arg: str) -> tuple[str, str] | None:
    try:
        address, rest = get_angle_addr(arg)
        return address.addr_spec, rest
    except Exception:  # noqa: BLE001 - the parser's errors are not one class
        return None


def fast(arg: str) -> tuple[str, str] | None:
    plain = _PLAIN_PATH.fullmatch(arg)
    return (plain.group(1), plain.group(2) or "") if plain else None


@pytest.mark.parametrize("arg", [
    "<jean.dupont@msante.test>", "<jean.dupont@msante.test> SIZE=10240 BODY=8BITMIME",
    " <a@b>", "<A.B+tag@Hopital-Sud.FR>   ", "<o'brien@x.fr>\tNOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b",
    "<secretariat.ehpad-filaos@msante.test> RET=HDRS ENVID=QQ314159",
])
def test_the_common_form_is_read_as_the_standard_library_reads_it(arg):
    assert fast(arg) is not None, arg
    assert fast(arg) == stdlib(arg)


@pytest.mark.parametrize("arg", [
    "<>", '<"a b"@c.fr>', "<a@[1.2.3.4]>", "<@relay.fr:a@b.fr>", "<a..b@c>", "<.a@b>", "<a.@b>",
    "<a@b..c>", "<a@b.c.>", "<jéan@msante.test>", "<a@b> (comment) SIZE=1",
    "a@b", "<a@b", "<a@b>x", "<a b@c>", "<a@b\udcff>",
])
def test_other_forms_are_left_to_the_standard_library(arg):
    assert fast(arg) is None, arg


_ATEXT = st.sampled_from("abcXYZ019!#$%&'*+/=?^_`{|}~-")
_PIECE = st.text(_ATEXT, min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(local=st.lists(_PIECE, min_size=1, max_size=3), domain=st.lists(
       st.text(st.sampled_from("ab9-Z"), min_size=1, max_size=5), min_size=1, max_size=3),
       lead=st.sampled_from(["", " ", "  "]), rest=st.sampled_from(["", " ", " SIZE=1", "  BODY=8BITMIME SMTPUTF8",
                                                                     " (c)", "\tRET=FULL", "x"]))
def test_generated_paths_agree_with_the_standard_library(local, domain, lead, rest):
    arg = f"{lead}<{'.'.join(local)}@{'.'.join(domain)}>{rest}"
    got = fast(arg)
    if got is not None:
        assert got == stdlib(arg), arg
