"""LIST-EXTENDED (RFC 5258) and LSUB (RFC 3501 §6.3.9) on subscriptions (issue 12, Correctness
8): RECURSIVEMATCH and CHILDINFO, subscribed names whose folder is gone, unsubscribed parents."""
from __future__ import annotations

import re

import pytest

from .imap_client import RawImap, untagged


@pytest.fixture
def client(server):
    client = RawImap(server)
    client.login_token(server)
    for name in ("t/test1", "t/test2/test1", "t/test3", "t/test6", "t/test7/test7", "t/test8/test8",
                 "t/test8/test9"):
        client.ok(f"CREATE {name}")
    for name in ("t/test1", "t/test2/test1", "t/test6", "t/test7/test7", "t/test8/test8", "t/test8/test9"):
        client.ok(f"SUBSCRIBE {name}")
    client.ok("DELETE t/test6")
    yield client
    client.close()


def listed(lines: list[bytes]) -> dict[str, tuple[set[str], str]]:
    """name -> (attributes, extended data) of each LIST/LSUB line."""
    out = {}
    for line in untagged(lines, b"LIST") + untagged(lines, b"LSUB"):
        m = re.match(rb'\* (?:LIST|LSUB) \(([^)]*)\) "/" ("[^"]*"|\S+)(.*)\r\n', line)
        out[m[2].strip(b'"').decode()] = (set(m[1].decode().split()), m[3].decode().strip())
    return out


def test_recursivematch_needs_another_selection_option(client):
    for command in ('LIST (RECURSIVEMATCH) "" ""', 'LIST (RECURSIVEMATCH REMOTE) "" ""',
                    'LIST (IMAPTEST) "" ""', 'LIST "" "" RETURN (IMAPTEST)'):
        tag, lines = client.command(command)
        assert lines[-1].startswith(f"{tag} BAD".encode()), (command, lines)
    client.ok('LIST (REMOTE) "" %')


def test_subscribed_lists_a_deleted_folder_as_nonexistent(client):
    found = listed(client.ok('LIST (SUBSCRIBED) "" t/*'))
    assert set(found) == {"t/test1", "t/test2/test1", "t/test6", "t/test7/test7", "t/test8/test8", "t/test8/test9"}
    assert {"\\Subscribed", "\\NonExistent"} <= found["t/test6"][0] and "\\Noselect" not in found["t/test6"][0]
    assert "\\NonExistent" not in found["t/test1"][0]
    assert "t/test6" not in listed(client.ok('LIST "" t/*'))


def test_recursivematch_gives_childinfo_for_parents_of_unmatched_subscribed_children(client):
    found = listed(client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" t/test2% RETURN (CHILDREN)'))
    assert found == {"t/test2": ({"\\HasChildren"}, '("CHILDINFO" ("SUBSCRIBED"))')}
    found = listed(client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" t*test7'))
    assert set(found) == {"t/test7/test7"}  # the subscribed child is matched itself: no CHILDINFO
    found = listed(client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" t*test8'))
    assert found["t/test8"][1] == '("CHILDINFO" ("SUBSCRIBED"))' and "\\Subscribed" not in found["t/test8"][0]
    assert "\\Subscribed" in found["t/test8/test8"][0] and set(found) == {"t/test8", "t/test8/test8"}
    found = listed(client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/test2 t/test2/test1)'))
    assert set(found) == {"t/test2/test1"}


def test_lsub_percent_shows_an_unsubscribed_parent_as_noselect(client):
    found = listed(client.ok('LSUB "" t/%'))
    assert found == {"t/test1": (set(), ""), "t/test2": ({"\\Noselect"}, ""), "t/test6": (set(), ""),
                     "t/test7": ({"\\Noselect"}, ""), "t/test8": ({"\\Noselect"}, "")}
    assert set(listed(client.ok('LSUB "" t/*'))) == {
        "t/test1", "t/test2/test1", "t/test6", "t/test7/test7", "t/test8/test8", "t/test8/test9"}
