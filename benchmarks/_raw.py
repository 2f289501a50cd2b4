"""Raw OS baselines: what the machine can do without any actor framework.

* asyncio Unix-domain-socket echo between two processes (uvloop and plain asyncio): round trip,
  10k pipelined requests, 10k one-way messages + a barrier, fan-out to 4 servers, payload sweep;
* memcpy bandwidth (numpy ``copyto``) of 64 MiB and 16 MiB;
* ``process_vm_readv`` bandwidth of 64 MiB from another process (ctypes on libc);
* 4 bare Python interpreters started and each answering once.

Helper processes are started as ``python -m benchmarks._raw serve|vmserve ...`` and always
killed in ``finally`` blocks; the orchestrator also sweeps up anything left by its run token.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from benchmarks._stats import metric

# Frame header: kind (u8) + payload length (u64).
HDR = struct.Struct("!BQ")
ECHO, ONEWAY, BARRIER = 0, 1, 2
STREAM_LIMIT = 1 << 25

PAYLOAD_SIZES = [64, 1024, 16384, 262144, 1048576, 4194304, 16777216]
MIB = 1 << 20


def loop_kinds() -> list[str]:
    """``["uvloop", "asyncio"]`` when uvloop is importable, else ``["asyncio"]``."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["uvloop", "asyncio"]


def run_loop(kind: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Runs ``main()`` on a fresh event loop of the given kind."""
    if kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    with asyncio.Runner() as runner:
        return runner.run(main())


# --------------------------------------------------------------------------- echo server


async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    count = 0
    try:
        while True:
            hdr = await reader.readexactly(HDR.size)
            kind, n = HDR.unpack(hdr)
            payload = await reader.readexactly(n) if n else b""
            if kind == ECHO:
                writer.writelines((hdr, payload))
                if n > 65536:
                    await writer.drain()
            elif kind == ONEWAY:
                count += 1
            else:
                writer.write(HDR.pack(BARRIER, 8) + count.to_bytes(8, "little"))
                count = 0
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _FrameReceiver(asyncio.BufferedProtocol):
    """Receives ``HDR``-framed messages straight into a preallocated, growable buffer."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.filled = 0
        self.transport: Any = None  # uvloop's transports do not subclass asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.filled >= HDR.size:
            _, n = HDR.unpack_from(self.buf)
            if HDR.size + n > len(self.buf):
                new = bytearray(HDR.size + n)
                new[: self.filled] = self.buf[: self.filled]
                self.buf = new
        elif len(self.buf) - self.filled < HDR.size:
            self.buf.extend(bytes(HDR.size))
        return memoryview(self.buf)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        while self.filled >= HDR.size:
            _, n = HDR.unpack_from(self.buf)
            end = HDR.size + n
            if self.filled < end:
                return
            self.frame(memoryview(self.buf)[:end])
            rest = self.filled - end
            if rest:
                self.buf[:rest] = self.buf[end : self.filled]
            self.filled = rest

    def frame(self, frame: memoryview) -> None:
        raise NotImplementedError


class _BufferedEchoServer(_FrameReceiver):
    def frame(self, frame: memoryview) -> None:
        assert self.transport is not None
        self.transport.write(frame)  # copies only what the kernel does not take at once


class _BufferedEchoClient(_FrameReceiver):
    def __init__(self) -> None:
        super().__init__()
        self.waiter: asyncio.Future[int] | None = None

    def frame(self, frame: memoryview) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(frame[-1] if len(frame) > HDR.size else -1)

    async def echo(self, payload: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(HDR.pack(ECHO, len(payload)))
        self.transport.write(payload)
        return await self.waiter


def serve(path: str, kind: str, mode: str) -> None:
    """Echo server process body: listens on ``path``, prints ``ready``, serves until killed.

    ``mode`` is ``streams`` (asyncio streams, all frame kinds) or ``buffered`` (echo only,
    ``BufferedProtocol`` into a preallocated buffer: the copy-free limit for large payloads).
    """

    async def main_streams() -> None:
        server = await asyncio.start_unix_server(_serve_conn, path, limit=STREAM_LIMIT)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    async def main_buffered() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(_BufferedEchoServer, path)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    run_loop(kind, main_streams if mode == "streams" else main_buffered)


@contextlib.contextmanager
def echo_servers(kind: str, modes: list[str]) -> Iterator[list[str]]:
    """Starts one echo server process per mode; yields their socket paths; kills them after."""
    tmp = tempfile.mkdtemp(prefix="monarch-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    paths = [os.path.join(tmp, f"echo{i}.sock") for i in range(len(modes))]
    try:
        for path, mode in zip(paths, modes):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks._raw", "serve", path, kind, mode],
                    stdout=subprocess.PIPE,
                )
            )
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError("echo server failed to start")
        yield paths
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(tmp)


async def _uds_client(paths: list[str], quick: bool) -> list[dict[str, Any]]:
    conns = [await asyncio.open_unix_connection(p, limit=STREAM_LIMIT) for p in paths]
    reader, writer = conns[0]
    small = b"x" * 64
    out: list[dict[str, Any]] = []

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter, payload: bytes) -> bytes:
        w.writelines((HDR.pack(ECHO, len(payload)), payload))
        _, n = HDR.unpack(await r.readexactly(HDR.size))
        return await r.readexactly(n)

    # Round trip of a small message.
    for _ in range(200):
        await echo(reader, writer, small)
    n_calls = 1000 if quick else 3000
    lat: list[float] = []
    for _ in range(n_calls):
        t0 = time.perf_counter()
        await echo(reader, writer, small)
        lat.append((time.perf_counter() - t0) * 1e6)
    out.append(metric("uds_echo_rtt_us", "us", "lower", lat))

    # 10k requests written, then 10k replies read.
    rates: list[float] = []
    frame = HDR.pack(ECHO, len(small)) + small
    for _ in range(2 if quick else 4):
        t0 = time.perf_counter()
        for _ in range(10_000):
            writer.write(frame)
        for _ in range(10_000):
            _, n = HDR.unpack(await reader.readexactly(HDR.size))
            await reader.readexactly(n)
        rates.append(10_000 / (time.perf_counter() - t0))
    out.append(metric("uds_pipelined_10k_per_s", "/s", "higher", rates))

    # 10k one-way messages, then a barrier request.
    rates = []
    oneway = HDR.pack(ONEWAY, len(small)) + small
    for _ in range(2 if quick else 4):
        t0 = time.perf_counter()
        for _ in range(10_000):
            writer.write(oneway)
        writer.write(HDR.pack(BARRIER, 0))
        _, n = HDR.unpack(await reader.readexactly(HDR.size))
        got = int.from_bytes(await reader.readexactly(n), "little")
        rates.append(10_000 / (time.perf_counter() - t0))
        if got != 10_000:
            raise RuntimeError(f"barrier counted {got} messages, expected 10000")
    out.append(metric("uds_oneway_10k_barrier_per_s", "/s", "higher", rates))

    # Fan-out: one request to each of 4 servers, then all 4 replies.
    lat = []
    for i in range(50 + (300 if quick else 1000)):
        t0 = time.perf_counter()
        for _, w in conns:
            w.writelines((HDR.pack(ECHO, len(small)), small))
        for r, _ in conns:
            _, n = HDR.unpack(await r.readexactly(HDR.size))
            await r.readexactly(n)
        if i >= 50:
            lat.append((time.perf_counter() - t0) * 1e6)
    out.append(metric("uds_fanout4_us", "us", "lower", lat))

    for _, w in conns:
        w.close()
    return out


async def _buffered_client(path: str, quick: bool) -> list[dict[str, Any]]:
    """Payload sweep over a ``BufferedProtocol`` connection: receives land in preallocated
    buffers, sends go straight to the kernel (the copy-free limit of asyncio for big payloads)."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_unix_connection(_BufferedEchoClient, path)
    out: list[dict[str, Any]] = []
    try:
        for size in PAYLOAD_SIZES:
            payload = b"\x01" * size
            iters = max(5 if quick else 10, min(300 if quick else 1000, (2 << 30) // (size * 64)))
            lat = []
            for i in range(iters + 3):
                t0 = time.perf_counter()
                last = await client.echo(payload)
                if i >= 3:
                    lat.append((time.perf_counter() - t0) * 1e6)
            if last != 1:
                raise RuntimeError("echo returned wrong bytes")
            out.append(
                metric(
                    f"uds_payload_rtt_us/{size}", "us", "lower", lat, group="payload_rtt_us", x=size
                )
            )
            if size == 16 * MIB:
                out.append(metric("uds_echo_16mib_MBps", "MB/s", "higher", [size / t for t in lat]))
    finally:
        assert client.transport is not None
        client.transport.close()
    return out


def uds(quick: bool) -> list[dict[str, Any]]:
    """UDS echo baselines for every available loop kind; names get a ``[loop]`` suffix."""
    results: list[dict[str, Any]] = []
    for kind in loop_kinds():
        with echo_servers(kind, ["streams"] * 4 + ["buffered"]) as paths:
            ms = run_loop(kind, lambda: _uds_client(paths[:4], quick))
            ms += run_loop(kind, lambda: _buffered_client(paths[4], quick))
        for m in ms:
            m["name"] = f"{m['name']}[{kind}]"
            if "group" in m:
                m["group"] = f"{m['group']}[{kind}]"
            m["loop"] = kind
            results.append(m)
    return results


# --------------------------------------------------------------------------- memory


def memcpy(quick: bool) -> list[dict[str, Any]]:
    """memcpy bandwidth (GB/s, bytes copied / time) with numpy ``copyto``."""
    import numpy as np

    out = []
    for mib in (64, 16):
        n = mib * MIB
        src = np.full(n, 7, dtype=np.uint8)
        dst = np.zeros(n, dtype=np.uint8)
        np.copyto(dst, src)
        samples = []
        for _ in range(10 if quick else 30):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            samples.append(n / 1e9 / (time.perf_counter() - t0))
        out.append(metric(f"memcpy_{mib}mib_GBps", "GB/s", "higher", samples))
    return out


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def vmserve(size: int) -> None:
    """Owner process for the ``process_vm_readv`` test: prints ``pid addr``, waits on stdin."""
    buf = bytearray(b"\x5a") * size
    addr = ctypes.addressof((ctypes.c_char * size).from_buffer(buf))
    print(os.getpid(), addr, flush=True)
    sys.stdin.read()


def vm_readv(quick: bool) -> list[dict[str, Any]]:
    """Bandwidth of reading 64 MiB from another process with ``process_vm_readv``."""
    size = 64 * MIB
    libc = ctypes.CDLL(None, use_errno=True)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    libc.process_vm_readv.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IOVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    owner = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._raw", "vmserve", str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        pid_s, addr_s = owner.stdout.readline().split()
        pid, addr = int(pid_s), int(addr_s)
        dst = bytearray(size)
        dst_addr = ctypes.addressof((ctypes.c_char * size).from_buffer(dst))

        def read_all() -> None:
            done = 0
            while done < size:
                local = _IOVec(dst_addr + done, size - done)
                remote = _IOVec(addr + done, size - done)
                n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
                if n < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"process_vm_readv: {os.strerror(err)}")
                done += n

        read_all()
        if dst[0] != 0x5A or dst[-1] != 0x5A:
            raise RuntimeError("process_vm_readv read wrong bytes")
        samples = []
        for _ in range(10 if quick else 30):
            t0 = time.perf_counter()
            read_all()
            samples.append(size / 1e9 / (time.perf_counter() - t0))
        return [metric("process_vm_readv_64mib_GBps", "GB/s", "higher", samples)]
    finally:
        owner.kill()
        owner.wait()


# --------------------------------------------------------------------------- spawn


def spawn_pythons(quick: bool) -> list[dict[str, Any]]:
    """Time for 4 bare interpreters (``python -c``) to start and each write one answer."""
    code = "import sys; sys.stdout.write('1')"
    samples = []
    for _ in range(3 if quick else 8):
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) for _ in range(4)
        ]
        for p in procs:
            assert p.stdout is not None
            if p.stdout.read(1) != b"1":
                raise RuntimeError("bare python did not answer")
        samples.append(time.perf_counter() - t0)
        for p in procs:
            p.wait()
    return [metric("spawn_4_pythons_s", "s", "lower", samples)]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "vmserve":
        vmserve(int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown helper {sys.argv[1]!r}")
