"""Local memory: the address, length and owner object of a tensor or memoryview.

Monarch's RDMA API takes a 1-D contiguous ``torch.Tensor`` or a C-contiguous ``memoryview``.
torch is never imported here: a tensor is recognised only when torch is already loaded.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["LocalMemory", "local_memory", "view_at"]


class _PyBuffer(ctypes.Structure):
    # CPython's Py_buffer (Include/pybuffer.h), stable since 3.3.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


@dataclass(frozen=True)
class LocalMemory:
    """A contiguous byte range of this process.

    Attributes:
        addr: virtual address of the first byte.
        size: length in bytes.
        writable: whether the memory may be written (read-only memoryviews are not).
        device: ``"cpu"`` or ``"cuda"``.
        keepalive: the object that owns the memory; holding it keeps ``addr`` valid.
    """

    addr: int
    size: int
    writable: bool
    device: str
    keepalive: Any


def _is_tensor(obj: object) -> bool:
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)  # None while torch is importing
    return tensor is not None and isinstance(obj, tensor)


def _memoryview_memory(mv: memoryview) -> LocalMemory:
    if mv.ndim > 1 or not mv.c_contiguous:
        raise ValueError("RDMA memory must be a 1-D C-contiguous memoryview")
    if mv.nbytes == 0:
        return LocalMemory(0, 0, not mv.readonly, "cpu", mv)
    view = _PyBuffer()
    if _get_buffer(mv, ctypes.byref(view), 0) != 0:  # pragma: no cover - contiguous checked above
        raise ValueError("could not get the memoryview's buffer")
    try:
        addr = int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))
    return LocalMemory(addr, mv.nbytes, not mv.readonly, "cpu", mv)


def local_memory(data: object) -> LocalMemory:
    """Describe ``data`` as a contiguous byte range of this process.

    Args:
        data: a 1-D contiguous ``torch.Tensor`` (CPU, or CUDA for the ibverbs backend), a
            C-contiguous ``memoryview``, or any object exporting a contiguous buffer
            (``bytearray``, numpy array).

    Returns:
        The range; its ``keepalive`` holds ``data``.

    Raises:
        ValueError: ``data`` is not 1-D contiguous.
        TypeError: ``data`` is neither a tensor nor a buffer.
    """
    if isinstance(data, memoryview):
        return _memoryview_memory(data)
    if _is_tensor(data):
        t: Any = data
        if t.dim() != 1 or not t.is_contiguous():
            raise ValueError(
                f"RDMA memory must be a 1-D contiguous tensor, got shape {tuple(t.shape)}; "
                "use t.view(torch.uint8).flatten()"
            )
        device = str(t.device.type)
        size = int(t.numel()) * int(t.element_size())
        return LocalMemory(int(t.data_ptr()), size, True, device, t)
    try:
        mv = memoryview(data)  # type: ignore[arg-type]  # any buffer exporter is accepted
    except TypeError:
        raise TypeError(
            f"RDMA memory must be a torch.Tensor or a memoryview, got {type(data).__name__}"
        ) from None
    return _memoryview_memory(mv)


def view_at(addr: int, size: int) -> memoryview:
    """A writable byte memoryview of ``size`` bytes at ``addr`` in this process.

    The caller keeps the owning object alive for as long as the view is used.
    """
    if size == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_char * size).from_address(addr)).cast("B")
