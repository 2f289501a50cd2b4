"""The names generated code uses, and nothing else (``from monarch import stubs``).

Everything a module written by ``monarch-gen`` refers to comes from here, so the runtime's
internal layout can change without regenerating user code.
"""

from __future__ import annotations

from ._core.future import Future
from ._core.value_mesh import ValueMesh
from ._idl import (
    CapnpCodec,
    LoadedSchema,
    Struct,
    StructInfo,
    Which,
    idl_endpoint,
    implements,
    load_schema,
    remote,
)
from ._mesh.actor import Actor, TypedActor
from ._mesh.actor_mesh import ActorMesh
from ._mesh.endpoint import Endpoint, EndpointProperty, EndpointSpec
from ._mesh.port import Port, PortReceiver
from ._mesh.stream import Stream

__all__ = [
    "Actor",
    "ActorMesh",
    "Bytes",
    "CapnpCodec",
    "Endpoint",
    "EndpointProperty",
    "EndpointSpec",
    "Future",
    "LoadedSchema",
    "Port",
    "PortReceiver",
    "Stream",
    "Struct",
    "StructInfo",
    "TypedActor",
    "ValueMesh",
    "Which",
    "idl_endpoint",
    "implements",
    "load_schema",
    "remote",
]

Bytes = bytes | bytearray | memoryview
"""What a ``Data`` field accepts; a received one is ``bytes`` (small) or a ``memoryview``."""
