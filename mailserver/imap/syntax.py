"""The values a command line is made of, as the parser hands them to the session.

IMAP's grammar is mostly context-free at the token level: atoms, strings (quoted or
literal) and parenthesised lists. FETCH sections are the exception: `BODY[HEADER.FIELDS
(From To)]<0.100>` is kept as one Atom, brackets, spaces and partial included, and
interpreted by `fetchitems`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Atom:
    """An atom, NIL, a number, a flag (\\Seen), a sequence set (1:*), or a FETCH section."""

    value: str


@dataclass(frozen=True)
class String:
    """A quoted string or a literal ({N}, {N+}, {N-}; `binary` for RFC 3516's ~{N})."""

    value: bytes
    literal: bool = False
    binary: bool = False


@dataclass(frozen=True)
class PList:
    """A parenthesised list."""

    items: tuple["Token", ...]


Token = Union[Atom, String, PList]


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper case; "UID" commands keep "UID" here and the verb in args[0]
    args: tuple[Token, ...]


def text(token: Token) -> str:
    """An astring's value (atom or string) as text: mailbox names, user names, search words.
    Raises ValueError for a list or for a string that is not UTF-8."""
    if isinstance(token, Atom):
        return token.value
    if isinstance(token, String):
        return token.value.decode("utf-8")
    raise ValueError("expected an atom or a string, got a list")
