"""The parent's non-blocking end of a worker's socket speaks multiprocessing's framing both ways."""

from __future__ import annotations

import selectors
import socket
import threading
from multiprocessing.connection import Connection

import pytest

from manyhands._backends._process_channel import CHUNK, Channel

pytestmark = pytest.mark.timeout(60, method="thread")

SIZES = [0, 1, 3, 4, 5, CHUNK - 5, CHUNK - 4, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 5_000_000]


def frames_of(sizes: list[int]) -> list[bytes]:
    return [bytes([n % 251]) * size for n, size in enumerate(sizes)]


def test_frames_a_connection_sends_arrive_whole_and_in_order() -> None:
    mine, theirs = socket.socketpair()
    channel, peer = Channel(mine), Connection(theirs.detach())
    sent = frames_of(SIZES * 2)
    writer = threading.Thread(target=lambda: [peer.send_bytes(f) for f in sent] and peer.close())
    writer.start()
    received: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        selector.register(channel.sock, selectors.EVENT_READ)
        while not channel.closed:
            assert selector.select(30), "the channel stalled"
            received += [bytes(frame) for frame in channel.receive()]
    writer.join()
    assert [len(f) for f in received] == [len(f) for f in sent]
    assert received == sent
    channel.close()


def test_frames_it_sends_without_blocking_reach_a_connection() -> None:
    mine, theirs = socket.socketpair()
    channel, peer = Channel(mine), Connection(theirs.detach())
    sent = frames_of(SIZES)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(peer.recv_bytes() for _ in sent))
    reader.start()
    with selectors.DefaultSelector() as selector:
        selector.register(channel.sock, selectors.EVENT_WRITE)
        done = True
        for frame in sent:
            done = channel.send(frame)  # never blocks: what the socket refuses waits
        while not done:
            assert selector.select(30), "the channel stalled"
            done = channel.flush()
    reader.join(30)
    assert received == sent
    channel.close()
    peer.close()


def test_a_peer_that_is_gone_ends_reading_and_drops_writes() -> None:
    mine, theirs = socket.socketpair()
    channel, peer = Channel(mine), Connection(theirs.detach())
    peer.send_bytes(b"last words")
    peer.close()
    assert [bytes(f) for f in channel.receive()] == [b"last words"]
    assert channel.receive() == [] and channel.closed
    assert channel.send(b"x" * (3 * CHUNK))  # dropped, not an error, never blocking
    assert not channel.pending
    channel.close()


@pytest.mark.parametrize("size", [0, 1, 5, 1000, CHUNK - 5, CHUNK - 4])
def test_a_frame_that_arrives_alone_is_read_whole_in_one_read(size: int) -> None:
    # (the common case, an answer read as it comes: used in place, not copied through
    # the buffer; the next frame still starts from an empty buffer)
    mine, theirs = socket.socketpair()
    channel, peer = Channel(mine), Connection(theirs.detach())
    frame, after = bytes([size % 251]) * size, b"next"
    with selectors.DefaultSelector() as selector:
        selector.register(channel.sock, selectors.EVENT_READ)
        for sent in (frame, after):
            peer.send_bytes(sent)
            received: list[bytes] = []
            while not received:
                assert selector.select(30), "the channel stalled"
                received += [bytes(f) for f in channel.receive()]
            assert received == [sent]
    assert not channel.closed
    channel.close()
    peer.close()
