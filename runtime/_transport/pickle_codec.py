"""The payload codec of plain Python endpoints: pickle protocol 5 with out-of-band buffers.

Arguments of plain types take a fast path (``pickle``); anything else goes through cloudpickle so
``__main__`` classes, lambdas and closures travel by value. ``torch.Tensor`` and ``numpy`` arrays
travel as out-of-band buffers (never copied into the pickle stream) and arrive as views over the
received buffer: zero-copy on the receiving side. Large ``bytes``/``bytearray`` also travel out of
band; they arrive as ``bytes``/``bytearray`` (one copy, since Python cannot adopt foreign memory).
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
from typing import Any

import cloudpickle

from .codec import ENCODING_PICKLE, Encoded

__all__ = ["PICKLE_CODEC", "PickleCodec", "dumps", "loads"]

_PLAIN = (int, float, str, bool, type(None))
_SCALARS = frozenset(_PLAIN)
_LARGE = 64 * 1024


def _plain(obj: Any, depth: int = 0) -> bool:
    t = type(obj)
    if t in _PLAIN:
        return True
    if t is bytes:
        return len(obj) < _LARGE
    if depth > 2:
        return False
    if t is tuple or t is list:
        return len(obj) <= 16 and all(_plain(x, depth + 1) for x in obj)
    if t is dict:
        return len(obj) <= 16 and all(type(k) is str and _plain(v, depth + 1) for k, v in obj.items())
    return False


def _rebuild_tensor(buf: Any, dtype: str, shape: tuple[int, ...], requires_grad: bool, device: str) -> Any:
    import torch

    dt = getattr(torch, dtype)
    mv = memoryview(buf).cast("B")
    if mv.nbytes == 0:
        t = torch.empty(shape, dtype=dt)
    else:
        t = torch.frombuffer(mv, dtype=torch.uint8).view(dt).reshape(shape)
    if device != "cpu":
        t = t.to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _rebuild_bytes(buf: Any, kind: str) -> Any:
    return bytearray(buf) if kind == "bytearray" else bytes(buf)


class _LargeBytes:
    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_rebuild_bytes, (pickle.PickleBuffer(self.data), type(self.data).__name__))


def _reduce_tensor(t: Any) -> Any:
    import torch

    device = str(t.device)
    src = t.detach()
    if device != "cpu":
        src = src.cpu()
    src = src.contiguous()
    raw = src.reshape(-1).view(torch.uint8).numpy() if src.numel() else memoryview(b"")
    dtype = str(src.dtype).removeprefix("torch.")
    return (_rebuild_tensor, (pickle.PickleBuffer(raw), dtype, tuple(src.shape), bool(t.requires_grad), device))


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if (t.__module__ == "torch" and t.__name__ in ("Tensor",)) or _is_parameter(t):
            return _reduce_tensor(obj)
        return super().reducer_override(obj)


def _is_parameter(t: type) -> bool:
    # torch.Tensor, not just torch: another thread may be importing torch (a spawn decoded off
    # the loop), and a half-initialised torch has no Tensor yet, so no tensor can exist either
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    return tensor is not None and issubclass(t, tensor) and t.__module__.startswith("torch")


# large bytes nested deeper than this in plain containers travel in the pickle stream (correct,
# one copy more); the bound keeps deeply nested values from exhausting the stack here
_WRAP_DEPTH = 8


def _wrap_large(obj: Any, depth: int = 0) -> Any:
    t = type(obj)
    if (t is bytes or t is bytearray) and len(obj) >= _LARGE:
        return _LargeBytes(obj)
    if depth >= _WRAP_DEPTH:
        return obj
    if t is tuple:
        return tuple(_wrap_large(x, depth + 1) for x in obj)
    if t is list:
        return [_wrap_large(x, depth + 1) for x in obj]
    if t is dict:
        return {k: _wrap_large(v, depth + 1) for k, v in obj.items()}
    return obj


def dumps(obj: Any) -> tuple[bytes, list[Any]]:
    """Pickle ``obj``; returns the stream and the out-of-band buffers (raw memoryviews).

    Values nested too deeply for this thread's stack (a list 900 levels deep) are pickled again
    on a helper thread with a large stack and recursion limit.

    Raises:
        pickle.PicklingError, TypeError: ``obj`` cannot be pickled.
    """
    if _plain(obj):
        return pickle.dumps(obj, 5), []
    try:
        return _dump(obj)
    except (RecursionError, pickle.PicklingError) as exc:
        if isinstance(exc, pickle.PicklingError) and "recursion" not in str(exc):
            raise
        return _dump_deep(obj)


def _dump(obj: Any) -> tuple[bytes, list[Any]]:
    buffers: list[Any] = []
    f = io.BytesIO()
    _Pickler(f, protocol=5, buffer_callback=buffers.append).dump(_wrap_large(obj))
    return f.getvalue(), [b.raw() for b in buffers]


_DEEP_STACK_BYTES = 512 << 20  # virtual: only the pages a deep value touches are used
_DEEP_RECURSION_LIMIT = 1_000_000
_deep_lock = threading.Lock()


def _dump_deep(obj: Any) -> tuple[bytes, list[Any]]:
    """:func:`_dump` on a thread with a large stack and recursion limit (one at a time)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(_dump(obj))
        except BaseException as exc:  # re-raised in the caller's thread
            out.append(exc)

    with _deep_lock:
        old_limit = sys.getrecursionlimit()
        old_stack = threading.stack_size(_DEEP_STACK_BYTES)
        try:
            sys.setrecursionlimit(max(old_limit, _DEEP_RECURSION_LIMIT))
            t = threading.Thread(target=run, name="monarch deep pickle")
            t.start()
        finally:
            threading.stack_size(old_stack)
        t.join()
        sys.setrecursionlimit(old_limit)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]  # type: ignore[no-any-return]


def loads(data: Any, buffers: list[memoryview]) -> Any:
    """Unpickle a stream made by :func:`dumps`; tensors and arrays become views over ``buffers``."""
    return pickle.loads(data, buffers=buffers)


class PickleCodec:
    """Codec for plain Python endpoints (see the module docstring)."""

    encoding = ENCODING_PICKLE

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Encoded:
        if not kwargs and len(args) <= 4:
            for a in args:
                if type(a) not in _SCALARS:
                    break
            else:  # the common small call: skip the generic checks
                return pickle.dumps((args, kwargs), 5), []
        return dumps((args, kwargs))

    def decode_call(self, payload: memoryview, buffers: list[memoryview]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = loads(payload, buffers)
        return args, kwargs

    def encode_result(self, value: Any) -> Encoded:
        if type(value) in _SCALARS:
            return pickle.dumps(value, 5), []
        return dumps(value)

    def decode_result(self, payload: memoryview, buffers: list[memoryview]) -> Any:
        return loads(payload, buffers)


PICKLE_CODEC = PickleCodec()
