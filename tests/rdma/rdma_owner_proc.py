"""A stand-alone RDMA owner process for the data-plane tests (no actors).

Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"op": "register", "size": N, "salt": S, "readonly": false} -> {"desc": hex, "index": i}
  {"op": "check", "index": i, "salt": S, "size": N}            -> {"ok": bool}
  {"op": "drop", "index": i}                                    -> {"ok": true}
  {"op": "configure", ...}         monarch.rdma.configure(...)  -> {"ok": true}
  {"op": "release", "index": i}    forget buffer i (after a drop), wait until its memory is freed,
                                   then fill the heap with 0x5A sentinels of the same size
                                                                -> {"freed": bool, "reused": bool}
  {"op": "sentinels"}              whether every sentinel still holds 0x5A -> {"ok": bool}
  {"op": "exit"}
The owned memory is a bytearray filled with pattern(size, salt).
"""

from __future__ import annotations

import json
import sys
import threading
import weakref


class Mem(bytearray):
    """A bytearray that can be watched with a weakref (to see when it is freed)."""


def pattern(size: int, salt: int) -> bytes:
    block = bytes((i * 7 + salt) % 251 for i in range(251 * 16))
    return (block * (size // len(block) + 1))[:size]


def _addr(mem: bytearray) -> int:
    from monarch.rdma._memory import local_memory

    return local_memory(memoryview(mem)).addr


def main() -> None:
    from monarch.rdma import RDMABuffer, configure

    buffers: list[tuple[Mem, RDMABuffer] | None] = []
    sentinels: list[bytearray] = []
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "register":
            mem = Mem(pattern(cmd["size"], cmd["salt"]))
            view = memoryview(mem).toreadonly() if cmd.get("readonly") else memoryview(mem)
            buf = RDMABuffer(view)
            buffers.append((mem, buf))
            answer = {"desc": buf.to_bytes().hex(), "index": len(buffers) - 1}
        elif op == "check":
            entry = buffers[cmd["index"]]
            assert entry is not None
            mem = entry[0]
            answer = {"ok": bytes(mem[: cmd["size"]]) == pattern(cmd["size"], cmd["salt"])}
        elif op == "drop":
            entry = buffers[cmd["index"]]
            assert entry is not None
            entry[1].drop().get(timeout=30)
            answer = {"ok": True}
        elif op == "configure":
            configure(**cmd)
            answer = {"ok": True}
        elif op == "release":
            entry = buffers[cmd["index"]]
            assert entry is not None
            buffers[cmd["index"]] = None
            mem, buf = entry
            size, addr = len(mem), buf._desc.addr
            freed = threading.Event()
            weakref.finalize(mem, freed.set)
            del entry, mem, buf
            view = memoryview(b"")  # drop this loop's reference to the last registered memory
            ok = freed.wait(timeout=30)
            reused = False
            for _ in range(256):
                sentinel = bytearray(b"\x5a" * size)
                sentinels.append(sentinel)
                if _addr(sentinel) <= addr < _addr(sentinel) + size:
                    reused = True
                    break
            answer = {"freed": ok, "reused": reused}
        elif op == "sentinels":
            answer = {"ok": all(s.count(0x5A) == len(s) for s in sentinels)}
        elif op == "exit":
            return
        else:
            answer = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
