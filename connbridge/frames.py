"""Framing of ``multiprocessing.connection`` messages, without I/O.

Each message on the wire is a length prefix and the payload. The prefix is a
4-byte big-endian *signed* length; a payload longer than ``2**31 - 1`` bytes is
announced by the length ``-1`` followed by an 8-byte big-endian unsigned
length. This is what CPython's ``Connection._send_bytes`` writes and
``_recv_bytes`` reads (Python 2.7's C implementation reads the 4 bytes as an
unsigned length and never sends more than ``2**31 - 1``, so it agrees).

:class:`FrameDecoder` is incremental: it is fed bytes in any chunking and hands
out whole payloads. It checks the announced length against its limit as soon
as the header is complete, so an oversized frame is refused before its payload
is buffered.
"""

from __future__ import annotations

from .errors import FrameTooLarge, ProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "LONG_FRAME_MARKER",
    "MAX_SHORT_FRAME",
    "FrameDecoder",
    "encode_frame",
    "frame_header",
]

#: Default largest payload accepted from a peer: 64 MiB.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
#: Largest payload that fits the 4-byte signed header.
MAX_SHORT_FRAME = 0x7FFFFFFF
#: The 4-byte header value that announces an 8-byte length.
LONG_FRAME_MARKER = b"\xff\xff\xff\xff"
_MAX_LONG_FRAME = 0xFFFFFFFFFFFFFFFF


def frame_header(size: int) -> bytes:
    """Return the length prefix for a payload of ``size`` bytes.

    Raises ``ValueError`` for a negative size or one beyond 64 bits.
    """
    if size < 0 or size > _MAX_LONG_FRAME:
        raise ValueError(f"cannot frame a payload of {size} bytes")
    if size <= MAX_SHORT_FRAME:
        return size.to_bytes(4, "big")
    return LONG_FRAME_MARKER + size.to_bytes(8, "big")


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Return header and payload as one ``bytes`` (one copy; meant for small payloads)."""
    return frame_header(len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream into payloads, one frame at a time.

    ``max_frame`` may be changed between frames; the stdlib handshake, for
    example, reads its messages with a limit of 256 bytes.
    """

    __slots__ = ("_buffer", "_size", "_start", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        # Length of the frame whose header has been read, and where its payload
        # starts in the buffer; -1 while the header is still incomplete.
        self._size = -1
        self._start = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out (headers included)."""
        return len(self._buffer)

    @property
    def pending_size(self) -> int | None:
        """Payload size of the frame being received, once its header is known."""
        return self._size if self._size >= 0 else None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next complete payload, or ``None`` if more bytes are needed.

        Raises :class:`FrameTooLarge` as soon as a header announces more than
        ``max_frame`` bytes, and :class:`ProtocolError` for a header no peer
        may send (a negative length other than the long-frame marker).
        After either error the stream is unusable.
        """
        buffer = self._buffer
        if self._size < 0 and not self._read_header():
            return None
        end = self._start + self._size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            payload = bytes(view[self._start : end])
        del buffer[:end]
        self._size = -1
        return payload

    def skip(self, data: bytes | bytearray | memoryview = b"") -> int:
        """Drop ``data`` (and what is buffered), returning how many frames it completed.

        For a connection that is closing: its remaining replies are counted,
        not kept, so at most one frame header is ever buffered, whatever
        ``max_frame`` says. A header no peer may send ends the counting.
        """
        buffer = self._buffer
        buffer += data
        count = 0
        while True:
            if self._size < 0:
                try:
                    if not self._read_header(check_size=False):
                        return count
                except ProtocolError:
                    buffer.clear()
                    return count
            end = self._start + self._size
            if len(buffer) >= end:
                del buffer[:end]
                self._size = -1
                count += 1
                continue
            # Part of the payload: drop it and remember how much is still due.
            self._size -= len(buffer) - self._start
            del buffer[self._start :]
            return count

    def _read_header(self, *, check_size: bool = True) -> bool:
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        size = int.from_bytes(buffer[:4], "big", signed=True)
        start = 4
        if size == -1:
            if len(buffer) < 12:
                return False
            size = int.from_bytes(buffer[4:12], "big")
            start = 12
        elif size < 0:
            raise ProtocolError(f"invalid frame header: negative length {size}")
        if check_size and size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        self._size = size
        self._start = start
        return True
