"""The typed vocabulary of the envelope: message kinds, flag bits and control operations.

The values mirror ``idl/monarch/envelope.capnp`` (``Kind`` enumerants, the ``flags`` bits, and the
operations a ``control``/``supervision`` envelope names in its ``endpoint`` field). They are
``StrEnum``/``IntFlag`` members, so they compare equal to the plain strings and ints on the wire.
"""

from __future__ import annotations

from enum import IntFlag, StrEnum

__all__ = [
    "END_OF_STREAM_BIT", "EXPLICIT_PORT_BIT", "KIND_BY_CODE", "KIND_CODE", "STREAM_BIT", "TRANSPORT_KINDS", "ControlOp", "Kind",
    "MessageFlags",
]


class Kind(StrEnum):
    """``Envelope.kind``: what a frame carries (``envelope.capnp`` enum ``Kind``)."""

    CALL = "call"
    REPLY = "reply"
    CONTROL = "control"
    SUPERVISION = "supervision"
    PORT = "port"
    HELLO = "hello"
    # transport-internal frames (handled inside monarch._transport, never given to on_frame)
    SHM_SEGMENT = "shmSegment"
    SHM_FREE = "shmFree"
    SHM_RETIRE = "shmRetire"


#: kinds in enumerant order: ``KIND_BY_CODE[code]`` is the kind whose capnp ordinal is ``code``
KIND_BY_CODE: tuple[Kind, ...] = tuple(Kind)
#: the capnp ordinal of each kind
KIND_CODE: dict[str, int] = {k.value: i for i, k in enumerate(KIND_BY_CODE)}
#: the kinds that only the transport sends and handles
TRANSPORT_KINDS = frozenset({Kind.SHM_SEGMENT, Kind.SHM_FREE, Kind.SHM_RETIRE})


class MessageFlags(IntFlag):
    """``Envelope.flags`` bits."""

    NONE = 0
    STREAM = 1  # a call whose results stream (several parts per rank, then an end marker)
    EXPLICIT_PORT = 2  # a call to an explicit-response-port endpoint
    END_OF_STREAM = 4  # a reply part that carries no value: the stream of that rank ended
    PICKLED = 8  # a call (and its replies) pickle-coded whatever the endpoint's codec: the tensor
    # engine's rref of an IDL endpoint, whose arguments carry its place in the op stream


# The bits as plain ints, for code that runs per message: ``int & MessageFlags.X`` builds a new
# IntFlag member (about 1 us in CPython 3.11), ``int & int`` costs 50 ns.
STREAM_BIT = int(MessageFlags.STREAM)
EXPLICIT_PORT_BIT = int(MessageFlags.EXPLICIT_PORT)
END_OF_STREAM_BIT = int(MessageFlags.END_OF_STREAM)
PICKLED_BIT = int(MessageFlags.PICKLED)


class ControlOp(StrEnum):
    """``Envelope.endpoint`` of ``control`` and ``supervision`` envelopes: the runtime operation."""

    SPAWN = "spawn"  # create the actors of a mesh (payload: pickled spawn record)
    STOP_MESH = "stop_mesh"  # stop the local actors of ``actor``; reply when all have stopped
    EXIT = "exit"  # stop every actor, then end the proc
    FAILURE = "failure"  # a MeshFailure of ``actor`` travelling to its owner
    SKIP = "skip"  # sequence numbers from the origin lost with a dead forwarder (payload: list)
    CONTROLLER = "controller"  # to the root: get or spawn the named controller, reply its mesh
    PING = "ping"  # answer at once on the reply port: the proc is up (ProcMesh.initialized)
    HEARTBEAT = "heartbeat"  # a proc is alive (sent to its owner every peer_timeout_s / 4)
