"""The DATA section of an SMTP transaction, read in chunks (sans-IO).

aiosmtpd reads DATA one line at a time (a `readuntil` and a few list operations per line, in
Python): ~45 MB/s, the main cost of accepting a 1 MB message. This reader takes whatever the
socket delivered, finds the end of data (CRLF "." CRLF, RFC 5321 §4.1.1.4) with `bytes.find`
and removes the transparency dots (§4.5.2) with one `bytes.replace` when it is over, if a line
was dot-stuffed (the same search finds the first such line: `_find_end`). It keeps
aiosmtpd's rules exactly, so the replies and what is stored do not change:
- only CRLF ends a line; a bare LF or bare CR is data, so "\\n.\\n" and "\\n.\\r\\n" do not end
  the message (no SMTP smuggling through this server);
- a line starting with "." loses that dot, whatever follows it;
- a line longer than `max_line` octets (CRLF included) → 500, more than `max_size` octets of
  (still dot-stuffed) data → 552, each sent only once the client's data ended (§4.2.5), and
  whichever limit was passed first; data past a limit is dropped as it arrives.
"""
from __future__ import annotations

import enum

END = b"\r\n.\r\n"
DOT_LINE = END[:3]  # a line starting with a dot: the end of data, or a stuffed dot


class Outcome(enum.Enum):
    OK = enum.auto()
    TOO_LONG = enum.auto()  # a line over max_line: 500
    TOO_MUCH = enum.auto()  # over max_size: 552


class DataReader:
    """Feed it what arrives after the 354 until `feed` returns the bytes that followed the end
    of data (the client's next, pipelined, commands); then read `outcome` and `content`."""

    def __init__(self, *, max_size: int, max_line: int) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self.outcome = Outcome.OK
        self.content = b""
        # The CRLF that ended the DATA command is put in front, so that a "." line first (an
        # empty message) is found by the same search as any other end of data.
        self._buf = bytearray(b"\r\n")
        self._line = 2  # where the line not yet checked against max_line starts
        self._done = False
        self._stuffed = False  # a line started with a dot that did not end the data

    def feed(self, chunk: bytes) -> bytes | None:
        """None: more data is needed. Bytes: the data ended; those followed it."""
        assert not self._done
        buf = self._buf
        start = max(0, len(buf) - len(END) + 1)  # the end of data may straddle two chunks
        buf += chunk
        end = self._find_end(start)
        if end < 0:
            if self.outcome is Outcome.OK:
                self._check_lines(len(buf))
            if self.outcome is Outcome.OK and len(buf) - 4 > self.max_size:  # ".\r" may yet end it
                self.outcome = Outcome.TOO_MUCH
            if self.outcome is not Outcome.OK:
                del buf[:-(len(END) - 1)]  # dropped as it arrives; only what may start END is kept
            return None
        self._done = True
        rest = bytes(buf[end + len(END):])
        if self.outcome is Outcome.OK:
            self._check_lines(end + 2)
        if self.outcome is Outcome.OK and end > self.max_size:  # end - 2 data octets, + the CRLF before "."
            self.outcome = Outcome.TOO_MUCH
        if self.outcome is Outcome.OK:
            content = bytes(memoryview(buf)[2:end + 2])
            if self._stuffed:
                if content.startswith(b"."):
                    content = content[1:]
                content = content.replace(DOT_LINE, b"\r\n")
            self.content = content
        self._buf = bytearray()
        return rest

    def _find_end(self, start: int) -> int:
        """Where END starts, searching from `start`; -1 if not there yet. Until a dot-stuffed
        line is met, the search is for a line starting with a dot, which finds both: most mail
        has no such line, and then un-stuffing (a second scan of the whole message, as long as
        the search, measured) is skipped. After one, the search is for END alone."""
        buf = self._buf
        if not self._stuffed:
            dot = buf.find(DOT_LINE, start)
            if dot < 0 or buf.startswith(END, dot):
                return dot
            if END.startswith(buf[dot:dot + len(END)]):
                return -1  # the chunk ended before telling: searched again with the next one
            self._stuffed = True
            start = dot
        return buf.find(END, start)

    def _check_lines(self, end: int) -> None:
        """Every line from `self._line` to `end` is at most max_line octets. One `rfind` per
        window of max_line octets, not per line: the last CRLF of a window ends a line that
        fits, and so do all lines before it in that window."""
        buf, limit, line = self._buf, self.max_line, self._line
        while end - line > limit:
            crlf = buf.rfind(b"\r\n", line, line + limit)
            if crlf < 0:
                self.outcome = Outcome.TOO_LONG
                return
            line = crlf + 2
        self._line = line
