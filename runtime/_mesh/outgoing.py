"""The two message forms the router sends besides envelopes, and how each becomes bytes.

:class:`TemplateMessage` is a call built from a pre-encoded template (the calls of one endpoint to
one slice); :class:`ReplyPart` is one rank's result for a caller's reply port. The router's one
send path (:meth:`~monarch._mesh.router.Router.send`) encodes any of them with :func:`encode`
(per message: type checks first, no indirection), or, for a delivery inside this process, turns
it into an envelope object and the buffers into :func:`local_buffers`.
"""

from __future__ import annotations

from typing import Any

from .._transport.encoder import encode_reply
from .._transport.frame import Envelope, EnvelopeTemplate
from .._transport.messages import Kind

__all__ = ["ReplyPart", "TemplateMessage", "encode", "local_buffers"]


class TemplateMessage:
    """A call built from a pre-encoded template (the calls of one endpoint to one slice)."""

    __slots__ = ("base", "payload", "reply_port", "template")

    def __init__(
        self, template: EnvelopeTemplate, base: Any, reply_port: int, payload: Any
    ) -> None:
        self.template = template
        self.base = base
        self.reply_port = reply_port
        self.payload = payload

    def envelope(self) -> Any:
        env = self.base.copy()
        env.replyPort = self.reply_port
        env.payload = self.payload
        return env


class ReplyPart:
    """One rank's result for the reply port ``port`` of a caller: one ``Part`` of a ``reply``.

    Attributes:
        port: the caller's reply port.
        rank: the answering rank's position in the called mesh.
        error: ``payload`` is an encoded error.
        last: the last part of this rank (streams send several).
        flags: ``Envelope.flags`` bits (``END_OF_STREAM_BIT`` for an end-of-stream marker).
        payload: the encoded result.
    """

    __slots__ = ("error", "flags", "last", "payload", "port", "rank")

    def __init__(
        self, port: int, rank: int, error: bool, last: bool, flags: int, payload: Any
    ) -> None:
        self.port = port
        self.rank = rank
        self.error = error
        self.last = last
        self.flags = flags
        self.payload = payload

    def envelope(self, nbufs: int) -> Any:
        """The same reply as an :class:`Envelope` with ``nbufs`` out-of-band buffers (for a
        delivery inside this process, which skips encoding)."""
        env = Envelope.new_message()
        env.kind = Kind.REPLY
        env.port = self.port
        p = env.init("parts", 1)[0]
        p.rank = self.rank
        p.error = self.error
        p.length = (
            len(self.payload) if type(self.payload) is bytes else memoryview(self.payload).nbytes
        )
        p.buffers = nbufs
        p.last = self.last
        if self.flags:
            env.flags = self.flags
        env.payload = self.payload
        return env


def encode(msg: Any, seq: int, lengths: list[int], shm: list[int] | None) -> Any:
    """The envelope bytes of ``msg`` (an Envelope, TemplateMessage or ReplyPart) with ``seq``."""
    t = type(msg)
    if t is TemplateMessage:
        return msg.template.encode(seq, msg.reply_port, msg.payload, lengths, shm)
    if t is ReplyPart:  # never sequenced: a reply port takes parts in any order
        return encode_reply(
            msg.port, msg.rank, msg.error, msg.last, msg.flags, msg.payload, lengths, shm
        )
    msg.seq = seq
    if lengths or msg.buffers:
        msg.buffers = lengths
    msg.shm = shm or ()
    return msg.to_bytes()


def local_buffers(bufs: list[Any]) -> list[memoryview]:
    """Buffers for an in-process delivery: writable views (read-only ones are copied)."""
    out = []
    for b in bufs:
        mv = (b if type(b) is memoryview else memoryview(b)).cast("B")
        out.append(memoryview(bytearray(mv)) if mv.readonly else mv)
    return out
