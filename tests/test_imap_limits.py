"""What one IMAP client may make the server do, over real sockets: how deep a SEARCH nests,
how long a mailbox name is, how much a client holds before login, how long it may stay
without logging in, how many refusals one session earns, how many connections one address
and everyone together hold."""
from __future__ import annotations

import pytest

from tests.imap_client import RawImap


def test_search_nesting_is_refused_with_bad_not_a_recursion_error(server):
    """`SEARCH NOT NOT … ALL` 2,000 deep hit Python's recursion limit (the session answered
    nothing sensible); the depth is now counted and capped."""
    client = RawImap(server)
    client.login_token(server)
    client.ok("SELECT INBOX")
    for key in ("NOT " * 2000 + "ALL", "OR ALL " * 2000 + "ALL", "NOT " * 70 + "ALL"):
        tag, lines = client.command(f"SEARCH {key}")
        assert lines[-1].startswith(f"{tag} BAD".encode()) and b"nest" in lines[-1], lines[-1][:200]
    client.ok("SEARCH " + "NOT " * 30 + "ALL")  # moderate nesting still works
    client.ok("NOOP")  # and the session goes on
    client.close()


@pytest.mark.parametrize("name", ["a" * 256, "/".join(["b" * 200] * 6), "x" * 60_000])
def test_mailbox_names_are_bounded(server, name):
    """60,000-character folder names were created; now 255 per level and 1,024 in all."""
    client = RawImap(server)
    client.login_token(server)
    tag, lines = client.command("CREATE \x00", name.encode())
    assert lines[-1].startswith(f"{tag} NO [LIMIT]".encode()), lines[-1][:200]
    listed = client.ok('LIST "" "*"')
    assert not any(name[:100].encode() in line for line in listed)
    client.ok("CREATE " + "/".join(["c" * 255] * 4))  # at the limits: accepted
    client.close()
