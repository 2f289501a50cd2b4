"""The names generated code uses, and nothing else (``from monarch import stubs``).

Everything a module written by ``monarch-gen`` refers to comes from here, so the runtime's
internal layout can change without regenerating user code.
"""

from __future__ import annotations

from ._core.exports import publish
from ._core.future import Future as Future
from ._core.value_mesh import ValueMesh as ValueMesh
from ._idl import (
    CapnpCodec,
    LoadedSchema,
    Struct,
    StructInfo,
    TensorHandle,
    Which,
    idl_endpoint,
    implements,
    load_schema,
    remote,
    remote_rref,
)
from ._mesh.actor import Actor as Actor
from ._mesh.actor import TypedActor
from ._mesh.actor_mesh import ActorMesh as ActorMesh
from ._mesh.endpoint import Endpoint as Endpoint
from ._mesh.endpoint import EndpointProperty as EndpointProperty
from ._mesh.endpoint import EndpointSpec
from ._mesh.port import Port as Port
from ._mesh.port import PortReceiver as PortReceiver
from ._mesh.stream import Stream as Stream

# Names listed here have this module as their home; the re-exports above (``X as X``) are the
# public ``monarch.actor`` objects, whose home is ``monarch.actor``.
__all__ = [
    "Bytes",
    "CapnpCodec",
    "EndpointSpec",
    "LoadedSchema",
    "Struct",
    "StructInfo",
    "TensorHandle",
    "TypedActor",
    "Which",
    "idl_endpoint",
    "implements",
    "load_schema",
    "remote",
    "remote_rref",
]

Bytes = bytes | bytearray | memoryview
"""What a ``Data`` field accepts; a received one is ``bytes`` (small) or a ``memoryview``."""

publish(globals(), __all__, __name__)
