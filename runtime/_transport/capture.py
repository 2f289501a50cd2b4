"""Frame capture: the frames of every link, written to files as they cross the socket.

Turned on by ``monarch.config``'s ``capture_frames_dir`` (``MONARCH_CAPTURE_FRAMES_DIR``), which
every proc of a job inherits. Each process writes into its own folder ``<dir>/<host>-<pid>/``:

- ``<n>-<send|recv>-<kind>-link<k>.capnp``: one envelope, exactly the bytes of its Cap'n Proto
  stream frame on the wire (``capnp decode idl/monarch/envelope.capnp Envelope`` reads it);
- ``<n>-<send|recv>-<kind>-link<k>.buffers``: the inline out-of-band bytes that followed it on
  the wire (each buffer padded to 8 bytes), only when there are any; buffers that travelled in
  shared memory are not in the stream and not here;
- ``links.txt``: one line per link, ``link<k> outgoing|accepted <peer>``; ``process.txt``: the
  pid, the command line and the addresses this process listens on.

``n`` counts the frames this process captured, in the order it sent or read them (on one link
and direction that is the order on the wire); ``n`` and ``k`` are unique in the process, also
when it runs several transports. Nothing of this runs when capture is off: the
transport attaches a :class:`FrameCapture` to each link at the link's construction, which
replaces the link's ``send`` and its decoder's read entry points for that link only. The
``shmSegment`` announcements a link writes with its descriptor (``SCM_RIGHTS``) bypass ``send``
and are captured by the receiver only. Debugging aid: every frame costs a file or two.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
from typing import Any

from .decoder import decode_envelope

__all__ = ["FrameCapture"]

log = logging.getLogger("monarch.transport")

_U32 = struct.Struct("<I")


class _Numbers:
    """Frame and link numbers, shared by every capture of this process (one folder)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames = 0
        self.links = 0

    def next_frame(self) -> int:
        with self.lock:
            n = self.frames
            self.frames += 1
            return n

    def next_link(self) -> int:
        with self.lock:
            k = self.links
            self.links += 1
            return k


_NUMBERS = _Numbers()


class FrameCapture:
    """Writes the frames of one transport's links into ``<root>/<host>-<pid>/``.

    Built once per transport, in the process that owns it (after any fork). Thread-safe: links
    send from any thread and read on the event loop.

    Args:
        root: the capture folder (``capture_frames_dir``); relative paths are resolved against
            this process's working directory. Created when missing.

    Raises:
        OSError: the folder cannot be created.
    """

    def __init__(self, root: str) -> None:
        self.folder = os.path.join(os.path.abspath(root), f"{socket.gethostname()}-{os.getpid()}")
        os.makedirs(self.folder, exist_ok=True)
        self.failed = False
        self._note("process.txt", f"pid {os.getpid()}\nargv {' '.join(sys.argv)}\n")

    def attach(self, link: Any) -> None:
        """Capture every frame ``link`` (a ``SocketLink`` that has read nothing yet) sends or
        reads from now on; called once per link, at its construction."""
        k = _NUMBERS.next_link()
        self._note(
            "links.txt", f"link{k} {'outgoing' if link.outgoing else 'accepted'} {link.peer}\n"
        )
        send = link.send
        order = threading.Lock()  # the record order of this link's sends is their wire order

        def captured_send(iov: list[Any]) -> None:
            with order:
                send(iov)
                self._record("send", k, iov[0], iov[1:])

        link.send = captured_send
        _ReceiveTap(self, k).install(link._decoder)  # the link's own reader: same package

    def listening(self, address: str) -> None:
        """Note an address this process listens on (in ``process.txt``)."""
        self._note("process.txt", f"listen {address}\n")

    def _note(self, name: str, text: str) -> None:
        try:
            with open(os.path.join(self.folder, name), "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            self._fail(exc)

    def _record(
        self,
        direction: str,
        link: int,
        envelope: Any,
        buffers: list[Any],
        *,
        kind: str = "",
        more: bool = False,
    ) -> str | None:
        """Write one envelope and the inline bytes after it (``buffers``, when any); ``kind``
        when the caller decoded it already.

        Returns:
            With ``more`` (the inline bytes are still to come: receiving), the path of the
            (empty) buffers file to append them to; None otherwise or when writing failed.
        """
        if self.failed:
            return None
        raw = bytes(envelope)
        if not kind:
            try:
                kind = decode_envelope(raw).kind
            except Exception:  # not an envelope: still captured; the peer will say what is wrong
                kind = "invalid"
        buffers = [b for b in buffers if memoryview(b).nbytes]  # a file only for bytes on the wire
        n = _NUMBERS.next_frame()
        base = os.path.join(self.folder, f"{n:08d}-{direction}-{kind}-link{link}")
        try:
            with open(base + ".capnp", "wb") as f:
                f.write(raw)
            if buffers or more:
                with open(base + ".buffers", "wb") as f:
                    for b in buffers:
                        f.write(b if type(b) is bytes else memoryview(b).cast("B"))
        except OSError as exc:
            self._fail(exc)
            return None
        return base + ".buffers" if more else None

    def _fail(self, exc: OSError) -> None:
        if not self.failed:
            self.failed = True
            log.warning("frame capture into %s stopped: %s", self.folder, exc)

    def __repr__(self) -> str:
        return f"<FrameCapture {self.folder!r} frames={_NUMBERS.frames} failed={self.failed}>"


class _ReceiveTap:
    """Cuts a copy of one link's received byte stream into frames, independently of the
    link's decoder (which keeps no raw bytes): envelope, then its inline buffer bytes."""

    def __init__(self, capture: FrameCapture, link: int) -> None:
        self._capture = capture
        self._link = link
        self._buf = bytearray()
        self._inline = 0  # inline buffer bytes of the current frame still to come
        self._side: str | None = None
        self._target: memoryview | None = None
        self._broken = False

    def install(self, decoder: Any) -> None:
        """Replace ``decoder``'s read entry points (``feed``, ``direct_target``,
        ``advance_direct``) by ones that show this tap the same bytes first."""
        feed, direct_target, advance_direct = (
            decoder.feed,
            decoder.direct_target,
            decoder.advance_direct,
        )

        def tapped_feed(data: Any, out: list[Any]) -> None:
            self.take(data)
            feed(data, out)

        def tapped_direct_target() -> memoryview | None:
            self._target = direct_target()
            return self._target

        def tapped_advance_direct(n: int, out: list[Any]) -> None:
            if self._target is not None:
                self.take(self._target[:n])
            advance_direct(n, out)

        decoder.feed = tapped_feed
        decoder.direct_target = tapped_direct_target
        decoder.advance_direct = tapped_advance_direct

    def take(self, data: Any) -> None:
        """Bytes just read from the socket, in stream order (loop thread)."""
        if self._broken or self._capture.failed:
            return
        try:
            self._take(memoryview(data).cast("B"))
        except Exception as exc:  # a malformed stream: the link's decoder reports it
            self._broken = True
            log.warning("frame capture of link%d stopped: %s", self._link, exc)

    def _take(self, data: memoryview) -> None:
        buf = self._buf
        pos, end = 0, data.nbytes
        while True:
            if self._inline:  # the inline buffer bytes of the frame whose envelope came last
                if pos >= end:
                    return
                take = min(self._inline, end - pos)
                if self._side is not None:
                    with open(self._side, "ab") as f:
                        f.write(data[pos : pos + take])
                self._inline -= take
                pos += take
                continue
            want, known = _envelope_bytes(buf)
            if len(buf) < want:
                if pos >= end:
                    return
                take = min(want - len(buf), end - pos)  # never past the envelope
                buf += data[pos : pos + take]
                pos += take
                continue
            assert known  # a size is final once the segment table is in
            raw = bytes(buf)
            del buf[:]
            env = decode_envelope(raw)  # a malformed one ends the tap (take); the link closes
            shm = env.shm or [0] * len(env.buffers)
            self._inline = sum(
                (n + 7) & ~7 for n, s in zip(env.buffers, shm, strict=False) if not s
            )
            self._side = self._capture._record(
                "recv", self._link, raw, [], kind=env.kind, more=self._inline > 0
            )


def _envelope_bytes(buf: bytearray) -> tuple[int, bool]:
    """How many bytes the stream-framed message at the start of ``buf`` takes, as far as
    ``buf`` tells (Cap'n Proto's standard serialization): ``(size, True)`` once its segment
    table is complete, else ``(bytes needed to read further, False)``."""
    if len(buf) < 8:
        return 8, False
    nseg = _U32.unpack_from(buf, 0)[0] + 1
    table = 4 * (1 + nseg)
    table += table & 4
    if len(buf) < table:
        return table, False
    return table + 8 * sum(struct.unpack_from(f"<{nseg}I", buf, 4)), True
