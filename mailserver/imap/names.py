"""What a logged-in client sees as mailbox names, and what it may do with each.

One login opens one directory box as the personal namespace (the box named at login, else
the person's own nominative box). The other boxes the person may use, organisational boxes
they are delegated to, appear under the shared namespace (RFC 2342), as
`Shared/<address>/<folder>`: a delegate's client shows the secretariat's box beside their
own without a second account.

Rights are RFC 4314's letters. An owner (or an application on its applicative box) has them
all. A delegate has what the box's ACL gives their national identifier, else DELEGATE_RIGHTS:
everything but administering the ACL, which stays with whoever the operator granted "a".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from directory.access import MailboxGrant

DELIMITER = "/"
SHARED_PREFIX = "Shared"
ALL_RIGHTS = "lrswipkxtea"
DELEGATE_RIGHTS = "lrswipkxte"
# RFC 4314 §2.1.1: rights an identifier always has on a box we show it (l, r) and the rest in
# groups a client may grant one at a time.
LISTRIGHTS = ("lr", "s", "w", "i", "p", "k", "x", "t", "e", "a")


@dataclass(frozen=True)
class Box:
    """A directory box as this session sees it."""

    grant: MailboxGrant
    prefix: str  # "" for the personal namespace, "Shared/<address>/" for a shared box
    rights: str

    def visible_name(self, folder: str) -> str:
        return self.prefix + folder

    def may(self, right: str) -> bool:
        return right in self.rights


@dataclass(frozen=True)
class Resolved:
    box: Box
    folder: str  # the folder name in the store ("INBOX" normalised)


class Namespace:
    def __init__(self, personal: Box, shared: list[Box]) -> None:
        self.personal = personal
        self.shared = shared

    @property
    def boxes(self) -> list[Box]:
        return [self.personal, *self.shared]

    def resolve(self, name: str) -> Resolved | None:
        """A client's mailbox name -> (box, folder), or None when it names nothing selectable."""
        name = name.rstrip(DELIMITER) if name != DELIMITER else name
        for box in self.shared:
            if name.startswith(box.prefix) and len(name) > len(box.prefix):
                return Resolved(box, normalise(name[len(box.prefix):]))
        if name == SHARED_PREFIX or name.startswith(SHARED_PREFIX + DELIMITER) or not name:
            return None
        return Resolved(self.personal, normalise(name))

    def container_names(self) -> list[str]:
        """The \\Noselect levels above shared boxes: `Shared`, `Shared/<address>`."""
        if not self.shared:
            return []
        return [SHARED_PREFIX, *(box.prefix.rstrip(DELIMITER) for box in self.shared)]


def normalise(folder: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1), and so is its first level."""
    head, sep, rest = folder.partition(DELIMITER)
    return "INBOX" + sep + rest if head.upper() == "INBOX" else folder


def shared_prefix(address: str) -> str:
    return f"{SHARED_PREFIX}{DELIMITER}{address}{DELIMITER}"


def pattern_matcher(reference: str, pattern: str):  # noqa: ANN201 - Callable[[str], bool]
    """RFC 3501 §6.3.8: `*` matches anything, `%` anything but the delimiter; the reference
    is prefixed to the pattern. A pattern starting with INBOX matches it in any case."""
    full = reference + pattern if reference and not pattern.startswith(DELIMITER) else pattern
    regex = re.compile("".join(".*" if c == "*" else f"[^{re.escape(DELIMITER)}]*" if c == "%" else re.escape(c)
                               for c in full) + r"\Z", re.DOTALL)
    inbox_first = full[:5].upper() == "INBOX"

    def matches(name: str) -> bool:
        if inbox_first and name[:5] == "INBOX":
            return regex.match(full[:5] + name[5:]) is not None
        return regex.match(name) is not None
    return matches


def valid_rights(rights: str) -> bool:
    """RFC 4314 rights letters, plus the obsolete c and d (RFC 2086) that §2.1.1 maps."""
    return all(ch in ALL_RIGHTS + "cd" for ch in rights)


def expand_rights(rights: str) -> str:
    """RFC 4314 §2.1.1: obsolete "c" means "k" (and x), "d" means "xte"; keep canonical order."""
    letters = set(rights.replace("c", "kx").replace("d", "xte"))
    return "".join(ch for ch in ALL_RIGHTS if ch in letters)
