"""A stand-alone RDMA owner process for the data-plane tests (no actors).

Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"op": "register", "size": N, "salt": S, "readonly": false} -> {"desc": hex, "index": i}
  {"op": "check", "index": i, "salt": S, "size": N}            -> {"ok": bool}
  {"op": "drop", "index": i}                                    -> {"ok": true}
  {"op": "exit"}
The owned memory is a bytearray filled with pattern(size, salt).
"""

from __future__ import annotations

import json
import sys


def pattern(size: int, salt: int) -> bytes:
    block = bytes((i * 7 + salt) % 251 for i in range(251 * 16))
    return (block * (size // len(block) + 1))[:size]


def main() -> None:
    from monarch.rdma import RDMABuffer

    buffers: list[tuple[bytearray, RDMABuffer]] = []
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "register":
            mem = bytearray(pattern(cmd["size"], cmd["salt"]))
            view = memoryview(mem).toreadonly() if cmd.get("readonly") else memoryview(mem)
            buf = RDMABuffer(view)
            buffers.append((mem, buf))
            answer = {"desc": buf.to_bytes().hex(), "index": len(buffers) - 1}
        elif op == "check":
            mem = buffers[cmd["index"]][0]
            answer = {"ok": bytes(mem[: cmd["size"]]) == pattern(cmd["size"], cmd["salt"])}
        elif op == "drop":
            buffers[cmd["index"]][1].drop().get(timeout=30)
            answer = {"ok": True}
        elif op == "exit":
            return
        else:
            answer = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
