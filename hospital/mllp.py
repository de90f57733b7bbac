"""MLLP framing (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol"), sans-IO.

A frame is <VT> message <FS><CR> (0x0B … 0x1C 0x0D). The reader takes bytes as they come and
hands back whole messages; it owns no socket, so the asyncio listener, the client and the
tests share it. Frames are bounded (`max_frame`): a document message carries a PDF or CDA in
base64, so the default ([hl7] max_frame) is 20 MB, near the 25 MB mail limit it ends up in;
a peer that sends more, or bytes outside a frame, is cut off with `FramingError` (MLLP has no
way to answer a framing error: the connection is closed and logged).
"""
from __future__ import annotations

START = b"\x0b"  # <VT>
END = b"\x1c\r"  # <FS><CR>
DEFAULT_MAX_FRAME = 20 * 1024 * 1024


class FramingError(Exception):
    """The peer broke MLLP framing or exceeded the frame limit: close the connection."""


def frame(message: bytes) -> bytes:
    if START in message or b"\x1c" in message:
        raise ValueError("an HL7 message cannot hold the MLLP start or end bytes")
    return START + message + END


class FrameReader:
    """Feed bytes in, take whole messages out."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the open frame already searched for END

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages = []
        while self._buffer:
            if self._buffer[:1] != START:
                # Some senders put a newline between frames: tolerated, anything else is not.
                stripped = self._buffer.lstrip(b"\r\n")
                if stripped[:1] not in (START, b""):
                    raise FramingError(f"bytes outside an MLLP frame: {bytes(stripped[:16])!r}")
                self._buffer = bytearray(stripped)
                self._scanned = 0
                continue
            end = self._buffer.find(END, max(1, self._scanned - 1))
            if end < 0:
                self._scanned = len(self._buffer)
                if len(self._buffer) - 1 > self.max_frame:
                    raise FramingError(f"frame larger than {self.max_frame} bytes")
                break
            body = bytes(self._buffer[1:end])
            if len(body) > self.max_frame:
                raise FramingError(f"frame larger than {self.max_frame} bytes")
            if START in body:
                raise FramingError("a frame started inside another")
            messages.append(body)
            del self._buffer[:end + len(END)]
            self._scanned = 0
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame: a peer that closes with some has cut a message short."""
        return len(self._buffer)
