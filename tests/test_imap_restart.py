"""IMAP across a restart: a separate `msante serve` process, stopped with SIGTERM while a client
idles, then started again on the same data."""
from __future__ import annotations

import imaplib
import re
import ssl

import pytest

from tests.operators import Operator

GP, GP_RPPS = "jean.dupont@msante.test", "10001045367"


def connect(op: Operator) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(op.data_dir / "pki" / "ca.crt"))
    client = imaplib.IMAP4_SSL("localhost", op.ports["imaps"], ssl_context=context, timeout=15)
    bearer = op.cli("token", "issue", "--rpps", GP_RPPS).strip()
    client.authenticate("XOAUTH2", lambda _: f"user={GP}\x01auth=Bearer {bearer}\x01\x01".encode())
    return client


def inbox_state(client: imaplib.IMAP4_SSL) -> tuple[int, int, list[bytes]]:
    client.select("INBOX")
    uidvalidity = int(client.response("UIDVALIDITY")[1][0])
    modseq = int(client.response("HIGHESTMODSEQ")[1][0])
    _, data = client.uid("FETCH", "1:*", "(FLAGS)")
    return uidvalidity, modseq, sorted(d for d in data if d)


@pytest.mark.slow
def test_uids_flags_and_modseqs_survive_a_restart_and_idle_clients_get_bye(tmp_path):
    op = Operator(tmp_path, "a", "msante.test")
    op.start()
    try:
        for n in range(2):
            op.send(GP, GP_RPPS, [GP], f"avant redemarrage {n}")
        client = connect(op)
        client.select("INBOX")
        client.uid("STORE", "2", "+FLAGS", r"(\Flagged)")
        before = inbox_state(client)
        client.logout()

        idler = connect(op)
        idler.select("INBOX")
        tag = idler._new_tag().decode()
        idler.send(f"{tag} IDLE\r\n".encode())
        assert idler.readline().startswith(b"+")
        op.stop()  # SIGTERM: the idle client is told, not left hanging until the deadline
        assert idler.readline().startswith(b"* BYE")

        op.start()
        client = connect(op)
        after = inbox_state(client)
        assert after[0] == before[0]  # UIDVALIDITY
        assert after[1] >= before[1]
        assert after[2] == before[2]  # same UIDs, same flags
        op.send(GP, GP_RPPS, [GP], "apres redemarrage")
        client.noop()
        _, data = client.uid("SEARCH", "ALL")
        assert data[0].split() == [b"1", b"2", b"3"]
        assert re.search(rb"\\Flagged", b" ".join(before[2]))
        client.logout()
    finally:
        op.stop()
