"""Runtime support for generated (IDL) code: struct wrappers and the Cap'n Proto payload codec.

Layering: imports ``monarch._core``, ``monarch._transport``, ``monarch._mesh`` and ``capnp``;
never jinja2, and torch only lazily when a tensor field is touched.
"""

from ._adapters import StructAdapter, get_adapter, register_adapter
from ._codec import CapnpCodec, idl_endpoint, implements, remote
from ._rref import RRefEndpoint, RRefEndpointProperty, TensorHandle, remote_rref
from ._schema import LoadedSchema, idl_import_path, load_schema
from ._struct import AnyStruct, Struct, StructInfo, Which, struct_class
from ._types import OOB_THRESHOLD_BYTES

__all__ = [
    "OOB_THRESHOLD_BYTES",
    "AnyStruct",
    "CapnpCodec",
    "LoadedSchema",
    "RRefEndpoint",
    "RRefEndpointProperty",
    "Struct",
    "StructAdapter",
    "StructInfo",
    "TensorHandle",
    "Which",
    "get_adapter",
    "idl_endpoint",
    "idl_import_path",
    "implements",
    "load_schema",
    "register_adapter",
    "remote",
    "remote_rref",
    "struct_class",
]
