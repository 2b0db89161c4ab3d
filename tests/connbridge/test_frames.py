"""Framing: every chunking, 64-bit lengths, limits, and byte equality with the stdlib."""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Connection as StdlibConnection

import pytest

from connbridge.errors import FrameTooLarge, ProtocolError
from connbridge.frames import (
    LONG_FRAME_MARKER,
    MAX_SHORT_FRAME,
    FrameDecoder,
    encode_frame,
    frame_header,
)

PAYLOADS = [b"", b"x", b"hello world", bytes(range(256)) * 3]


def test_frames_split_at_every_byte_boundary() -> None:
    stream = b"".join(encode_frame(p) for p in PAYLOADS)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = []
        for chunk in (stream[:cut], stream[cut:]):
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
        assert got == PAYLOADS, f"split at {cut}"
        assert decoder.buffered == 0


def test_frames_fed_one_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(p) for p in PAYLOADS)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == PAYLOADS


def test_short_header_up_to_the_signed_limit() -> None:
    assert frame_header(0) == b"\x00\x00\x00\x00"
    assert frame_header(MAX_SHORT_FRAME) == b"\x7f\xff\xff\xff"


def test_64_bit_length_encoded_past_the_signed_limit() -> None:
    size = MAX_SHORT_FRAME + 1
    assert frame_header(size) == LONG_FRAME_MARKER + size.to_bytes(8, "big")
    huge = 5 * 2**40
    assert frame_header(huge) == b"\xff\xff\xff\xff" + huge.to_bytes(8, "big")


def test_64_bit_length_decoded_without_allocating_the_payload() -> None:
    size = 3 * 2**31
    decoder = FrameDecoder(max_frame=2**40)
    header = frame_header(size)
    decoder.feed(header[:7])
    assert decoder.next_frame() is None
    assert decoder.pending_size is None
    decoder.feed(header[7:] + b"abc")
    assert decoder.next_frame() is None
    assert decoder.pending_size == size
    assert decoder.buffered == len(header) + 3  # nothing reserved for the payload


def test_64_bit_length_round_trip_of_a_small_frame() -> None:
    # A peer may use the long form for any size; the decoder accepts it.
    decoder = FrameDecoder()
    decoder.feed(LONG_FRAME_MARKER + (5).to_bytes(8, "big") + b"12345")
    assert decoder.next_frame() == b"12345"


def test_oversized_frame_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(frame_header(11))
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.size == 11
    assert info.value.limit == 10


def test_oversized_long_frame_refused_from_its_header() -> None:
    decoder = FrameDecoder()  # 64 MiB default
    decoder.feed(frame_header(2**40))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(encode_frame(b"0123456789"))
    assert decoder.next_frame() == b"0123456789"


def test_negative_length_is_a_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.feed((-2).to_bytes(4, "big", signed=True))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_limit_can_change_between_frames() -> None:
    decoder = FrameDecoder(max_frame=4)
    decoder.feed(encode_frame(b"abcd") + encode_frame(b"abcdefgh"))
    assert decoder.next_frame() == b"abcd"
    decoder.max_frame = 8
    assert decoder.next_frame() == b"abcdefgh"


@pytest.mark.parametrize("size", [0, 5, 16384, 16385, 300_000])
def test_bytes_equal_what_the_stdlib_writes_and_reads(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    left, right = socket.socketpair()
    stdlib = StdlibConnection(left.detach())
    try:
        # stdlib -> us
        sender = threading.Thread(target=stdlib.send_bytes, args=(payload,))
        sender.start()
        decoder = FrameDecoder()
        frame = None
        right.settimeout(10)
        while frame is None:
            decoder.feed(right.recv(65536))
            frame = decoder.next_frame()
        sender.join(10)
        assert frame == payload
        # us -> stdlib
        writer = threading.Thread(target=right.sendall, args=(encode_frame(payload),))
        writer.start()
        assert stdlib.poll(10)
        assert stdlib.recv_bytes() == payload
        writer.join(10)
    finally:
        stdlib.close()
        right.close()


def test_skip_counts_frames_without_keeping_their_payloads() -> None:
    decoder = FrameDecoder(max_frame=10)  # skipping ignores the limit: nothing is kept
    stream = b"".join(encode_frame(bytes([i]) * 1000) for i in range(3))
    assert decoder.skip(stream[:1500]) == 1
    assert decoder.buffered < 16  # the second frame's payload so far was dropped
    assert decoder.skip(stream[1500:]) == 2
    assert decoder.buffered == 0
    assert decoder.skip(b"\xff\xff\xff\xfe") == 0  # a header no peer may send ends it
    assert decoder.buffered == 0
