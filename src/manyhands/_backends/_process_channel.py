"""The parent's end of a worker's socket: framed messages, without ever blocking.

The dispatcher thread serves every worker from one ``select`` loop. A
blocking send would stall it while a worker, itself blocked sending results
that nobody reads, waits for it: a deadlock as soon as a batch and its results
outgrow the socket's buffers (~200 KB). So the parent's end is non-blocking:
outgoing frames wait in a buffer and are written when the socket is
writable, and whatever arrives is read into a buffer until a frame is whole.

Frames are those of :class:`multiprocessing.connection.Connection`, which the
worker uses on its (blocking) end: a 4-byte signed big-endian length, or -1
followed by an 8-byte length for frames of 2 GiB or more.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import TypeAlias

__all__ = ["Channel", "Frame", "frame_header"]

#: A received frame: a bytearray, or a view of the one read it came whole in.
Frame: TypeAlias = bytearray | memoryview

# Bytes read per recv while frames are small (a larger frame is read straight into
# its own buffer). Under malloc's mmap threshold (128 KiB): a recv of 256 KiB cost
# three more system calls per frame (mmap, then mremap and munmap to shrink it).
CHUNK = 64 * 1024
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame_header(size: int) -> bytes:
    """The length prefix ``Connection.recv_bytes`` expects.

    >>> frame_header(5), len(frame_header(2**31))
    (b'\\x00\\x00\\x00\\x05', 12)
    """
    if size > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(size)
    return _SHORT.pack(size)


class Channel:
    """Non-blocking framed I/O over a connected socket (see the module docstring)."""

    __slots__ = ("_body", "_buffer", "_got", "_out", "_unwritable", "closed", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False  # nothing more can be read: the peer is gone (EOF or a reset)
        self._unwritable = False  # a write failed: the peer is gone, what it sent still counts
        self._out: deque[memoryview] = deque()
        self._buffer = bytearray()  # received, not yet a whole frame
        self._body: bytearray | None = None  # a large frame being read straight into
        self._got = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> bool:
        """Whether queued bytes wait for the socket to become writable."""
        return bool(self._out)

    def send(self, data: bytes) -> bool:
        """Queue one frame and write what the socket takes now; True if all of it went.

        A frame the worker can no longer read (it died) is dropped: the
        process's sentinel tells the dispatcher what became of it.
        """
        if self._unwritable:
            return True
        if len(data) < CHUNK:
            self._out.append(memoryview(frame_header(len(data)) + data))
        else:  # no copy of a large frame
            self._out.append(memoryview(frame_header(len(data))))
            self._out.append(memoryview(data))
        return self.flush()

    def flush(self) -> bool:
        """Write queued bytes until the socket would block; True once none are left."""
        out = self._out
        while out:
            head = out[0]
            try:
                sent = self.sock.send(head)
            except BlockingIOError:
                return False
            except OSError:  # the worker is gone: what it did not read is lost with it
                out.clear()
                self._unwritable = True
                return True
            if sent < len(head):
                out[0] = head[sent:]
                return False
            out.popleft()
        return True

    def receive(self) -> list[Frame]:
        """The frames that are whole now (reading what the socket holds).

        Sets :attr:`closed` once the worker's end is gone; frames that arrived
        before that are still returned.
        """
        frames: list[Frame] = []
        while not self.closed:
            body = self._body
            try:
                if body is None:
                    chunk = self.sock.recv(CHUNK)
                else:
                    got = self.sock.recv_into(memoryview(body)[self._got :])
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                break
            if body is None:
                size = len(chunk)
                if (
                    size < CHUNK
                    and not self._buffer
                    and size >= 4
                    and _SHORT.unpack_from(chunk)[0] == size - 4
                ):  # (the common case: one whole frame, read alone; no copy)
                    frames.append(memoryview(chunk)[4:])
                    break
                if not chunk:
                    self.closed = True
                    break
                self._buffer += chunk
                self._split(frames)
                if len(chunk) < CHUNK and self._body is None:
                    break  # drained, most likely: the selector says when more comes
            elif not got:
                self.closed = True
            else:
                self._got += got
                if self._got == len(body):
                    frames.append(body)
                    self._body = None
        return frames

    def _split(self, frames: list[Frame]) -> None:
        """Move the whole frames out of the buffer; start reading a large one in place."""
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _SHORT.unpack_from(buffer, start)
            head = 4
            if size == -1:
                if len(buffer) - start < 12:
                    break
                (size,) = _LONG.unpack_from(buffer, start + 4)
                head = 12
            end = start + head + size
            if end <= len(buffer):
                frames.append(buffer[start + head : end])
                start = end
                continue
            if size > CHUNK:  # read the rest straight into the frame: no growing copies
                body = bytearray(size)
                have = len(buffer) - start - head
                body[:have] = buffer[start + head :]
                self._body, self._got = body, have
                start = len(buffer)
            break
        del buffer[:start]

    def close(self) -> None:
        self.closed = self._unwritable = True
        self._out.clear()
        self.sock.close()
