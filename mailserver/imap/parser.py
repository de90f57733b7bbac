"""IMAP command parser, sans I/O: bytes in, `Command`s (or what went wrong) out.

A command is one line, or several lines joined by literals: a line ending in `{N}`
announces N octets of raw data, then the command goes on with the next line (RFC 3501
§4.3, §7.5). `{N}` is synchronising: the client waits for the server's "+" before sending
the octets, so the parser stops with `LiteralPending` and the session answers with
`continue_literal()` or `refuse_literal()`. `{N+}` and `{N-}` (RFC 7888) and `~{N}`
(RFC 3516 literal8, either form) follow the same path.

Everything a client sends is untrusted, so the parser never raises on input and holds a
bounded amount of it: a line is at most `max_line` octets, a non-synchronising literal at
most `max_literal`, a whole command at most `max_command`. Beyond these the stream cannot
be resynchronised (the client is already sending the octets) and the parser gives `Fatal`.
A malformed command that was read in full gives `Bad`; the next command parses as usual.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .syntax import Atom, Command, PList, String, Token

# Deeper parenthesised lists are refused: the session and SEARCH walk them recursively.
MAX_DEPTH = 64

# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">; command names are atoms.
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_NAME = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# The literal announcement at the end of a line: literal8 "~", octet count, LITERAL+/-.
_LITERAL = re.compile(rb"(~?)\{([0-9]{1,10})([+-]?)\}\Z")
# An atom run. Besides ATOM-CHARs it takes "\" (flags), "*" and "%" (sequence sets, LIST
# wildcards) and "]" (astrings); "[" opens a FETCH section, scanned by `_section_end`, or when
# no section closes, is the ATOM-CHAR it is (`SELECT foo[bar`).
_ATOM_RUN = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\[]*')
# A quoted string: quoted-specials only as \" and \\; 8-bit allowed (RFC 9051, RFC 6855).
_QUOTED = re.compile(rb'"((?:[^\x00\r\n"\\]|\\["\\])*)"')
_ESCAPE = re.compile(rb'\\(["\\])')


@dataclass(frozen=True)
class LiteralPending:
    """A synchronising literal was announced: answer "+ ..." and call `continue_literal()`,
    or reply tagged NO/BAD (e.g. NO [TOOBIG] when `size` is too large) and call
    `refuse_literal()`."""

    tag: str
    command: str
    size: int
    binary: bool


@dataclass(frozen=True)
class Bad:
    """A syntax error; the whole command was consumed. Reply "<tag> BAD message", or
    "* BAD message" when the tag itself could not be read."""

    tag: str | None
    message: str


@dataclass(frozen=True)
class Fatal:
    """A limit was exceeded while the client was sending: reply "* BYE message" and close.
    The parser stays in this state and drops whatever it is fed."""

    message: str


class _Syntax(Exception):
    """Raised inside the tokenizer and turned into `Bad` before leaving the parser."""


class CommandParser:
    """The limits are public attributes: a session may raise `max_literal` (and
    `max_command` with it) once the user is authenticated, so that only APPEND by a known
    user can make the server hold megabytes."""

    def __init__(self, *, max_line: int = 64 * 1024, max_literal: int = 25 * 1024 * 1024,
                 max_command: int = 26 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command
        self._buf = bytearray()
        self._scanned = 0  # octets of _buf already searched for LF, so trickled lines stay linear
        self._fatal: Fatal | None = None
        # The command being assembled: lines[i] is followed by literals[i].
        self._lines: list[bytes] = []
        self._literals: list[String] = []
        self._size = 0  # octets the command has announced so far, literals included
        self._pending: LiteralPending | None = None  # announced, the session has not answered
        self._literal: bytearray | None = None  # being received
        self._literal_left = 0
        self._literal_binary = False

    @property
    def buffered(self) -> int:
        """Octets held: received but unparsed, plus the partial command."""
        partial = sum(map(len, self._lines)) + sum(len(s.value) for s in self._literals)
        return len(self._buf) + partial + len(self._literal or b"")

    def feed(self, data: bytes) -> None:
        if self._fatal is None:
            self._buf += data

    def next_command(self) -> Command | LiteralPending | Bad | Fatal | None:
        """The next event, or None when more bytes are needed (or while a LiteralPending
        awaits its answer)."""
        while True:
            if self._fatal is not None:
                return self._fatal
            if self._pending is not None:
                return None
            if self._literal is not None and not self._receive_literal():
                return None
            line = self._take_line()
            if not isinstance(line, bytes):
                return line
            event = self._line(line)
            if event is not None:
                return event

    def continue_literal(self) -> None:
        """The session sent "+": the announced octets are now part of the command."""
        pending = self._need_pending()
        if pending.size > self.max_literal:
            self._die("literal too large")  # the session was meant to refuse it
        else:
            self._expect_literal(pending.size, pending.binary)

    def refuse_literal(self) -> None:
        """The session answered with a tagged NO/BAD: the client abandons the command."""
        self._need_pending()
        self._reset()

    def next_line(self) -> bytes | Fatal | None:
        """Raw mode: one line without its CRLF, for AUTHENTICATE responses and IDLE's DONE.
        Fatal when the line is longer than max_line."""
        return self._fatal or self._take_line()

    def discard_buffer(self) -> None:
        """Drop unparsed bytes: what a client pipelined after STARTTLS was sent in clear
        text and must not be run inside TLS (the CVE-2011-0411 / CVE-2024-34083 class)."""
        self._buf.clear()
        self._scanned = 0
        self._reset()

    # Framing

    def _take_line(self) -> bytes | Fatal | None:
        """Remove one line from the buffer (CRLF or bare LF), bounded by max_line."""
        limit = self.max_line + 2  # room for the CRLF
        end = self._buf.find(b"\n", self._scanned, limit)
        if end < 0:
            self._scanned = len(self._buf)
            return self._die("line too long") if len(self._buf) >= limit else None
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        self._scanned = 0
        line = line[:-1] if line.endswith(b"\r") else line
        return self._die("line too long") if len(line) > self.max_line else line

    def _expect_literal(self, size: int, binary: bool) -> None:
        self._literal, self._literal_left, self._literal_binary = bytearray(), size, binary

    def _receive_literal(self) -> bool:
        """Move announced literal octets from the buffer; True once all arrived."""
        assert self._literal is not None
        take = min(self._literal_left, len(self._buf))
        self._literal += self._buf[:take]
        del self._buf[:take]
        self._literal_left -= take
        if self._literal_left:
            return False
        self._literals.append(String(bytes(self._literal), literal=True, binary=self._literal_binary))
        self._literal = None
        return True

    def _line(self, line: bytes) -> Command | LiteralPending | Bad | Fatal | None:
        """One more line of the current command: finish it or announce a literal."""
        if not line and not self._lines:
            return None  # an empty line between commands is harmless
        announced = _LITERAL.search(line, max(0, len(line) - 16))
        if announced is None:
            self._lines.append(line)
            return self._finish()
        self._lines.append(line[:announced.start()])
        size = int(announced[2])
        binary = announced[1] == b"~"
        self._size += len(line) + size
        if announced[3]:  # non-synchronising: the octets are on their way
            if size > self.max_literal:
                return self._die("literal too large")
            if self._size > self.max_command:
                return self._die("command too long")
            self._expect_literal(size, binary)
            return None
        head = _head(self._lines[0])
        if isinstance(head, Bad) or (size <= self.max_literal and self._size > self.max_command):
            bad = head if isinstance(head, Bad) else Bad(head[0], "command too long")
            self._reset()  # the client waits for "+" and will not send the octets
            return bad
        self._pending = LiteralPending(head[0], head[1], size, binary)
        return self._pending

    def _finish(self) -> Command | Bad:
        lines, literals = self._lines, self._literals
        self._reset()
        head = _head(lines[0])
        if isinstance(head, Bad):
            return head
        tag, name, start = head
        try:
            return Command(tag, name, _tokenize(lines, literals, start))
        except _Syntax as error:
            return Bad(tag, str(error))

    def _need_pending(self) -> LiteralPending:
        if self._pending is None:
            raise RuntimeError("no literal is pending")
        pending, self._pending = self._pending, None
        return pending

    def _reset(self) -> None:
        self._lines, self._literals, self._size = [], [], 0
        self._pending = self._literal = None

    def _die(self, message: str) -> Fatal:
        self._fatal = Fatal(message)
        self._buf.clear()
        self._reset()
        return self._fatal


def _head(line: bytes) -> tuple[str, str, int] | Bad:
    """Tag and upper-cased command name of a command's first line, and where args start."""
    tag, _, rest = line.partition(b" ")
    if not _TAG.fullmatch(tag):
        return Bad(None, "invalid tag")
    name = rest.partition(b" ")[0]
    if not name:
        return Bad(tag.decode(), "missing command name")
    if not _NAME.fullmatch(name):
        return Bad(tag.decode(), "invalid command name")
    return tag.decode(), name.decode().upper(), len(tag) + 1 + len(name)


def _tokenize(lines: list[bytes], literals: list[String], start: int) -> tuple[Token, ...]:
    """The arguments: atoms, strings and nested lists, separated by spaces (RFC 3501 §9).
    Iterative, so nesting costs no Python stack."""
    stack: list[list[Token]] = [[]]
    separated = False  # a token may start here: after a space or "("
    for i, line in enumerate(lines):
        pos = start if i == 0 else 0
        while pos < len(line):
            char = line[pos]
            if char == 0x20:
                pos, separated = pos + 1, True
                continue
            if char == 0x29:  # ")"
                if len(stack) == 1:
                    raise _Syntax("unexpected )")
                items = stack.pop()
                stack[-1].append(PList(tuple(items)))
                pos, separated = pos + 1, False
                continue
            if not separated:
                raise _Syntax("missing space between arguments")
            if char == 0x28:  # "("
                if len(stack) > MAX_DEPTH:
                    raise _Syntax("lists nested too deeply")
                stack.append([])
                pos += 1
                continue
            token, pos = _quoted(line, pos) if char == 0x22 else _atom(line, pos)
            stack[-1].append(token)
            separated = False
        if i < len(literals):
            if not separated:
                raise _Syntax("missing space before literal")
            stack[-1].append(literals[i])
            separated = False
    if len(stack) > 1:
        raise _Syntax("missing )")
    return tuple(stack[0])


def _quoted(line: bytes, pos: int) -> tuple[String, int]:
    match = _QUOTED.match(line, pos)
    if match is None:
        raise _Syntax("invalid quoted string")
    return String(_ESCAPE.sub(rb"\1", match[1])), match.end()


def _atom(line: bytes, pos: int) -> tuple[Atom, int]:
    """An atom, a flag, a sequence set, or a whole FETCH item like BODY[1.MIME]<0.100>."""
    end = pos
    while True:
        end = _ATOM_RUN.match(line, end).end()  # type: ignore[union-attr]  # matches ""
        if end < len(line) and line[end] == 0x5B:  # "["
            try:
                end = _section_end(line, end)
            except _Syntax:
                end += 1
        else:
            break
    if end == pos or line[end:end + 1] not in (b"", b" ", b")"):
        raise _Syntax("invalid character")
    return Atom(line[pos:end].decode("ascii")), end


def _section_end(line: bytes, pos: int) -> int:
    """Index past the "]" matching the "[" at pos. A section holds spaces, lists and
    quoted header names (`BODY[HEADER.FIELDS ("From" To)]`); all printable ASCII."""
    depth, quoted = 0, False
    while pos < len(line):
        char = line[pos]
        if not 0x20 <= char <= 0x7E:
            raise _Syntax("invalid character in section")
        if quoted and char == 0x5C:  # "\": only \" and \\
            if line[pos + 1:pos + 2] not in (b'"', b"\\"):
                raise _Syntax("invalid escape in section")
            pos += 1
        elif char == 0x22:
            quoted = not quoted
        elif not quoted and char == 0x5B:
            depth += 1
        elif not quoted and char == 0x5D:
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    raise _Syntax("missing ]")
