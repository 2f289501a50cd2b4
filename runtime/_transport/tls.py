"""Optional mutual TLS for TCP links, with the stdlib :mod:`ssl` (``ssl.SSLObject`` + ``MemoryBIO``).

When a process has a :class:`TlsConfig` (``MONARCH_TLS_CA`` / ``MONARCH_TLS_CERT`` /
``MONARCH_TLS_KEY``, or Monarch's ``ca`` / ``private_key`` arguments), every TCP link it makes or
accepts runs over TLS: the TLS handshake comes first, before a single frame byte, then the
cluster-token handshake of ``auth.py`` runs inside TLS whenever a token is set. Unix links on one
host stay plain.

Trust model: TLS here is always mutual. Every process presents a certificate signed by the
cluster's CA and verifies the peer's against the same CA bundle (``CERT_REQUIRED`` both ways);
host names are not checked (peers dial each other by IP address, and a CA that signs only the
job's certificates is the boundary), TLS 1.2 is the minimum. A peer with no certificate, a
certificate of another CA, or no TLS at all is refused during the handshake and nothing it sent is
decoded.

:class:`TlsLink` is a :class:`~monarch._transport.connection.SocketLink` whose writes encrypt the
queued iovecs (at most :data:`_TLS_BATCH` plaintext bytes at a time, so a 16 MiB buffer is never
held twice) and whose reads decrypt straight into the frame decoder's target buffers (large
out-of-band buffers included: no staging copy). The plain ``SocketLink`` path is unchanged: the
transport picks the class once, when the link is made.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import hashlib
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import monotonic as _monotonic
from typing import Any, cast

from .._core.errors import ProtocolError
from .base import TransportSettings
from .connection import _BURST_S, _FLUSH_BYTES, _RECV_CHUNK, _STAGE, SocketLink
from .shm import ShmBudget

__all__ = [
    "ENV_CA",
    "ENV_CERT",
    "ENV_KEY",
    "TLS_OK",
    "BlockingTlsStream",
    "TlsConfig",
    "TlsLink",
    "TlsSession",
    "tls_from_env",
    "tls_from_monarch",
]

ENV_CA = "MONARCH_TLS_CA"
"""Path of the CA bundle (PEM) that signs every certificate of the job."""
ENV_CERT = "MONARCH_TLS_CERT"
"""Path of this process's certificate chain (PEM; may hold the private key too)."""
ENV_KEY = "MONARCH_TLS_KEY"
"""Path of this process's private key (PEM); unset when ``MONARCH_TLS_CERT`` holds it."""

TLS_OK = b"MNRCHtl1"
"""Sent by the listener inside TLS when no token handshake follows: the dialer learns that its
certificate was accepted before it sends a frame (TLS 1.3 reports a refused client certificate
only at the client's first read)."""

log = logging.getLogger("monarch.transport")

_TLS_BATCH = 512 * 1024  # plaintext encrypted per socket write
_HANDSHAKE_READ = 64 * 1024


class _Raw(threading.local):
    """One ciphertext receive buffer per thread (reads run on the loop thread only)."""

    def __init__(self) -> None:
        self.buf: memoryview | None = None

    def get(self) -> memoryview:
        buf = self.buf
        if buf is None:
            buf = self.buf = memoryview(bytearray(_RECV_CHUNK))
        return buf


_RAW = _Raw()


@dataclass(frozen=True)
class TlsConfig:
    """The TLS files of one process: the CA bundle, its certificate chain, its private key.

    Args:
        ca: path of the PEM CA bundle peers' certificates must be signed by.
        cert: path of this process's PEM certificate chain (may also hold the key).
        key: path of the PEM private key; None when ``cert`` holds it.

    Raises:
        ValueError: a file is missing or is not valid PEM of its kind (the message names it).
    """

    ca: str
    cert: str
    key: str | None = None

    def __post_init__(self) -> None:
        for what, path in (
            ("CA bundle", self.ca),
            ("certificate", self.cert),
            ("private key", self.key),
        ):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"TLS {what} file {path!r} does not exist")
        self.server_context()  # load everything once now: a bad file fails here, named
        self.client_context()

    def server_context(self) -> ssl.SSLContext:
        """The context of accepted links (requires and verifies the dialer's certificate)."""
        return _context(self, server=True)

    def client_context(self) -> ssl.SSLContext:
        """The context of dialed links (presents our certificate, verifies the listener's)."""
        return _context(self, server=False)

    def env(self) -> dict[str, str]:
        """The ``MONARCH_TLS_*`` variables that give a child process this configuration."""
        out = {ENV_CA: self.ca, ENV_CERT: self.cert}
        if self.key is not None:
            out[ENV_KEY] = self.key
        return out


_contexts: dict[tuple[TlsConfig, bool], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _context(cfg: TlsConfig, *, server: bool) -> ssl.SSLContext:
    key = (cfg, server)
    ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if not server:
                ctx.check_hostname = False  # trust is the CA's signature (see the module docstring)
            ctx.verify_mode = ssl.CERT_REQUIRED
            try:
                ctx.load_verify_locations(cafile=cfg.ca)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"TLS CA bundle {cfg.ca!r} cannot be loaded: {exc}") from exc
            try:
                ctx.load_cert_chain(cfg.cert, cfg.key)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"TLS certificate {cfg.cert!r} / key {cfg.key!r} cannot be loaded: {exc}"
                ) from exc
            if server:
                ctx.num_tickets = 0  # no session tickets: links are long-lived, and nothing to read after the handshake
            _contexts[key] = ctx
    return ctx


def tls_from_env(environ: Any = None) -> TlsConfig | None:
    """The configuration named by ``MONARCH_TLS_CA`` / ``_CERT`` / ``_KEY``; None when unset.

    Raises:
        ValueError: only some are set, or a file is missing or invalid.
    """
    env = os.environ if environ is None else environ
    ca, cert, key = env.get(ENV_CA) or None, env.get(ENV_CERT) or None, env.get(ENV_KEY) or None
    if ca is None and cert is None and key is None:
        return None
    if ca is None or cert is None:
        raise ValueError(
            f"TLS needs both {ENV_CA} and {ENV_CERT} (and {ENV_KEY} unless the certificate file holds the key)"
        )
    return TlsConfig(ca, cert, key)


_scratch: list[str] = []


def _materialize(data: bytes, name: str) -> str:
    """Write PEM ``data`` to a private file (mode 0600 in a 0700 folder removed at exit); the
    same bytes give the same path (so equal arguments give equal configurations)."""
    if not _scratch:
        d = tempfile.mkdtemp(prefix="monarch-tls-")
        os.chmod(d, 0o700)
        _scratch.append(d)
        atexit.register(shutil.rmtree, d, True)
    path = os.path.join(_scratch[0], f"{name}-{hashlib.sha256(data).hexdigest()[:32]}.pem")
    if os.path.exists(path):
        return path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _file_of(value: Any, name: str, what: str) -> str:
    if isinstance(value, (bytes, bytearray)):
        return _materialize(bytes(value), name)
    if isinstance(value, (str, Path)):
        return os.fspath(value)
    raise TypeError(
        f"{what} must be a path (str or Path) or the PEM bytes, got {type(value).__name__}"
    )


def tls_from_monarch(ca: Any, private_key: Any) -> TlsConfig | None:
    """Monarch's ``ca`` / ``private_key`` arguments as a :class:`TlsConfig`.

    - ``ca``: None or ``"trust_all_connections"``: no TLS files given (the process's
      ``MONARCH_TLS_*`` configuration applies, and links are otherwise authenticated with the
      cluster token); a path (``str`` or ``Path``) of the PEM CA bundle; or the PEM bytes.
    - ``private_key``: a path (or PEM bytes) of one PEM file holding this process's private key
      and its certificate chain, or a ``(certificate, key)`` pair of paths or PEM bytes. Required
      with a ``ca``: every process presents a certificate (TLS here is always mutual, and a
      client listens too: its procs on other hosts dial it).

    Returns:
        The configuration, or :func:`tls_from_env`'s when no files were given.

    Raises:
        ValueError: a ``private_key`` without a ``ca``, a ``ca`` without a ``private_key``, or a
            missing or invalid file.
        TypeError: an argument of another type.
    """
    if ca is None or (isinstance(ca, str) and ca == "trust_all_connections"):
        if private_key is not None:
            raise ValueError(
                'a private_key needs a ca (the CA bundle that signs every peer\'s certificate), not None or "trust_all_connections"'
            )
        return tls_from_env()
    if private_key is None:
        raise ValueError(
            "ca given without private_key: TLS here is mutual, so this process needs its own certificate and key "
            "(private_key = a PEM file with both, or a (certificate, key) pair)"
        )
    ca_file = _file_of(ca, "ca", "ca")
    if isinstance(private_key, tuple):
        if len(private_key) != 2:
            raise ValueError("private_key as a tuple must be (certificate, key)")
        return TlsConfig(
            ca_file,
            _file_of(private_key[0], "cert", "certificate"),
            _file_of(private_key[1], "key", "private key"),
        )
    return TlsConfig(ca_file, _file_of(private_key, "key", "private_key"))


def _why(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc.strerror or exc)


class TlsSession:
    """One TLS connection's state (an ``SSLObject`` over two ``MemoryBIO``) on a non-blocking
    socket of ``loop``: the handshake and any pre-frame exchange run through :meth:`recv` /
    :meth:`sendall` (an ``auth.AsyncStream``); then a :class:`TlsLink` takes it over, with
    whatever ciphertext was already received.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)

    async def _fill(self) -> None:
        data = await self.loop.sock_recv(self.sock, _HANDSHAKE_READ)
        if not data:
            self.incoming.write_eof()
        else:
            self.incoming.write(data)

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await self.loop.sock_sendall(self.sock, self.outgoing.read())

    async def handshake(self) -> None:
        """Run the TLS handshake (bound it with ``asyncio.timeout``).

        Raises:
            ProtocolError: the peer speaks no TLS, or its certificate is refused (or ours).
            OSError: the socket failed.
        """
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if self.incoming.eof:
                    raise ProtocolError(
                        "peer closed the connection during the TLS handshake"
                    ) from None
                await self._fill()
                continue
            except ssl.SSLError as exc:
                try:
                    await self._flush()  # the alert, so the peer learns why
                except OSError:
                    pass
                raise ProtocolError(f"TLS handshake failed: {_why(exc)}") from exc
            await self._flush()
            return

    async def recv(self, n: int) -> bytes:
        """Up to ``n`` plaintext bytes; ``b""`` at the end of the stream.

        Raises:
            ProtocolError: a TLS error (e.g. the peer refused our certificate).
        """
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                if self.incoming.eof:
                    return b""
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # the peer closed (an SSLEOFError: without close_notify, as a closed socket does);
                # the frames above are length-prefixed, so a cut frame is still an error there
                return b""
            except ssl.SSLError as exc:
                raise ProtocolError(f"TLS: {_why(exc)}") from exc

    async def sendall(self, data: bytes) -> None:
        """Encrypt and write all of ``data``."""
        self.obj.write(data)
        await self._flush()


async def tls_dial(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    cfg: TlsConfig,
    token: bytes | None,
    timeout_s: float,
) -> TlsSession:
    """The dialer's side on a connected socket: TLS, then the token handshake (or :data:`TLS_OK`).

    Raises:
        ProtocolError: refused (TLS or token), or the peer speaks another protocol.
        TimeoutError: longer than ``timeout_s``.
        OSError: the socket failed.
    """
    from .auth import authenticate_dialer_io, recv_exact

    session = TlsSession(loop, sock, cfg.client_context(), server_side=False)
    async with asyncio.timeout(timeout_s):
        await session.handshake()
        if token is not None:
            await authenticate_dialer_io(session, token, timeout_s)
        elif await recv_exact(session, len(TLS_OK), "the TLS handshake") != TLS_OK:
            raise ProtocolError("the listener does not speak the monarch TLS protocol")
    return session


async def tls_accept(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    cfg: TlsConfig,
    token: bytes | None,
    timeout_s: float,
) -> TlsSession:
    """The listener's side on an accepted socket: TLS (the dialer's certificate is required),
    then the token handshake when this process has a token, else :data:`TLS_OK`.

    Raises:
        ProtocolError: refused (TLS or token).
        TimeoutError: longer than ``timeout_s``.
        OSError: the socket failed.
    """
    from .auth import authenticate_listener_io

    session = TlsSession(loop, sock, cfg.server_context(), server_side=True)
    async with asyncio.timeout(timeout_s):
        await session.handshake()
        if token is not None:
            await authenticate_listener_io(session, token, timeout_s)
        else:
            await session.sendall(TLS_OK)
    return session


class BlockingTlsStream:
    """A TLS client session over a blocking socket (its timeout bounds each step): an
    ``auth.BlockingStream`` that one thread may read while others write.

    Raises (constructor):
        ProtocolError: the handshake failed (the message says why).
        OSError: the socket failed or timed out.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=False)
        self._lock = threading.Lock()  # the SSL object: one operation at a time
        self._send_lock = threading.Lock()  # ciphertext order on the socket
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                data = sock.recv(_HANDSHAKE_READ)
                if not data:
                    raise ProtocolError(
                        "peer closed the connection during the TLS handshake"
                    ) from None
                self._in.write(data)
                continue
            except ssl.SSLError as exc:
                raise ProtocolError(f"TLS handshake failed: {_why(exc)}") from exc
            self._flush()
            return

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def recv(self, n: int, /) -> bytes:
        """Up to ``n`` plaintext bytes; ``b""`` at the end of the stream.

        Raises:
            ProtocolError: a TLS error.
            OSError: the socket failed or timed out.
        """
        while True:
            with self._lock:
                try:
                    return self._obj.read(n)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return b""
                except ssl.SSLError as exc:
                    raise ProtocolError(f"TLS: {_why(exc)}") from exc
            data = self.sock.recv(_HANDSHAKE_READ)  # not under the lock: writers go on meanwhile
            if not data:
                return b""
            with self._lock:
                self._in.write(data)

    def sendall(self, data: bytes, /) -> None:
        """Encrypt and write all of ``data`` (any thread).

        Raises:
            OSError: the socket failed or timed out.
        """
        with self._send_lock:
            with self._lock:
                self._obj.write(data)
                cipher = self._out.read()
            self.sock.sendall(cipher)


class TlsLink(SocketLink):
    """A :class:`SocketLink` over TLS (the same contract; see the module docstring).

    Args:
        session: the established session of an accepted link; None for a dialed link (it gets
            its session with :meth:`attach_tls`).
        Others: as :class:`SocketLink`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[Any, Any, list[memoryview]], None],
        on_close: Callable[[Any, BaseException | None], None],
        settings: TransportSettings,
        *,
        sock: socket.socket | None,
        peer: str = "",
        outgoing: bool = False,
        shm_budget: ShmBudget | None = None,
        session: TlsSession | None = None,
    ) -> None:
        self._tls = session
        self._cipher: memoryview | None = None  # encrypted bytes not yet written
        super().__init__(
            loop,
            on_frame,
            on_close,
            settings,
            sock=sock,
            peer=peer,
            outgoing=outgoing,
            shm_budget=None,
        )

    def attach_tls(self, sock: socket.socket, session: TlsSession) -> None:
        """Give a dialed link its socket and established session (loop thread)."""
        self._tls = session
        self.attach(sock)

    def start_reading(self) -> None:
        """Register the reader, and decrypt what the handshake already received (loop thread)."""
        if not self.closed and not self._reading and self.sock is not None:
            super().start_reading()
            self.loop.call_soon(self._on_readable)

    @property
    def flushed(self) -> bool:
        """As :attr:`SocketLink.flushed`, encrypted bytes not yet written included."""
        return self.closed or (not self._connecting and not self._pending and self._cipher is None)

    def share(self, bufs: list[Any]) -> list[int] | None:
        """No shared memory over TLS (TCP links): every buffer goes inline."""
        return None

    # -- writing ----------------------------------------------------------------------------
    def send(self, iov: list[Any]) -> None:
        """Encrypt and write one frame's iovecs, from any thread, without blocking.

        Raises:
            ConnectionError: the link is closed, or (while it is still being dialed) its
                queue already holds ``max_connect_queue_bytes``.
        """
        with self._lock:
            if self.closed:
                raise ConnectionResetError(f"connection to {self.peer} is closed")
            if self._connecting:
                n = sum(b.nbytes if type(b) is memoryview else memoryview(b).nbytes for b in iov)
                if self._connect_queued + n > self._settings.max_connect_queue_bytes:
                    raise ConnectionRefusedError(
                        f"connection to {self.peer} is not up yet and its queue is full"
                    )
                self._connect_queued += n
                self._append(iov, 0)
                return
            busy = bool(self._pending) or self._cipher is not None
            self._append(iov, 0)
            if self._writer_armed:
                return
            now = _monotonic()
            if busy or now - self._last_write < _BURST_S:
                self._last_write = now
                tail = self._tail
                if tail is not None and len(tail) < _FLUSH_BYTES and len(self._pending) == 1:
                    self._schedule_flush()  # a burst of small frames: one record, one write
                    return
            self._last_write = now
            self._write_locked()

    def _encrypt_some(self) -> None:
        """Encrypt up to ``_TLS_BATCH`` queued plaintext bytes into the outgoing BIO (lock held)."""
        assert self._tls is not None
        obj = self._tls.obj
        pending = self._pending
        budget = _TLS_BATCH
        while pending and budget > 0:
            head = pending[0]
            mv = memoryview(head) if type(head) is bytearray else head
            n = mv.nbytes
            if head is self._tail:
                self._tail = None  # no more appends to what is being encrypted
            if n <= budget:
                done = 0
                while done < n:
                    done += obj.write(mv[done:])
                pending.popleft()
                budget -= n
            else:
                done = 0
                while done < budget:
                    done += obj.write(mv[done:budget])
                pending[0] = mv[budget:]
                budget = 0

    def _write_locked(self) -> None:
        """Encrypt and write what is queued until done or the socket is full (then the loop
        takes over when it is writable)."""
        sock = self.sock
        tls = self._tls
        assert sock is not None and tls is not None
        out = tls.outgoing
        while True:
            cipher = self._cipher
            if cipher is None:
                if self._pending:
                    self._encrypt_some()
                if not out.pending:
                    return
                cipher = memoryview(out.read())
            try:
                sent = sock.send(cipher)
            except (BlockingIOError, InterruptedError):
                self._cipher = cipher
                self._arm_writer()
                return
            except OSError as exc:
                self._pending.clear()
                self._tail = None
                self._cipher = None
                self._schedule_close(exc)
                return
            self._last_write = _monotonic()
            self._cipher = cipher[sent:] if sent < cipher.nbytes else None

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            if (
                (self._pending or self._cipher is not None)
                and not self._writer_armed
                and not self.closed
                and not self._connecting
            ):
                self._write_locked()

    # -- reading ----------------------------------------------------------------------------
    def _decrypt(self, frames: list[tuple[Any, list[memoryview]]]) -> None:
        """Decrypt every complete record received so far into the decoder (lock held).

        Raises:
            EOFError: the peer ended the TLS session.
            ProtocolError: a TLS error, or a malformed frame.
        """
        assert self._tls is not None
        obj = self._tls.obj
        dec = self._decoder
        stage = _STAGE.get()
        while True:
            target = dec.direct_target()
            try:
                if target is not None:
                    n = cast(int, obj.read(target.nbytes, target))  # with a buffer: the count read
                    if n == 0:
                        raise EOFError
                    dec.advance_direct(n, frames)
                else:
                    n = cast(int, obj.read(_RECV_CHUNK, stage))
                    if n == 0:
                        raise EOFError
                    dec.feed(stage[:n], frames)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                raise EOFError from None
            except ssl.SSLError as exc:
                raise ProtocolError(f"TLS: {_why(exc)}") from exc

    def _on_readable(self) -> None:
        if self.closed or self.sock is None or self._tls is None:
            return
        frames: list[tuple[Any, list[memoryview]]] = []
        sock = self.sock
        incoming = self._tls.incoming
        raw = _RAW.get()
        try:
            for _ in range(64):
                try:
                    n = sock.recv_into(raw)
                except (BlockingIOError, InterruptedError):
                    n = -1
                if n == 0:
                    raise EOFError
                with self._lock:
                    if n > 0:
                        incoming.write(raw[:n])
                    self._decrypt(frames)
                    if (
                        self._tls.outgoing.pending
                        and not self._writer_armed
                        and not self._connecting
                        and not self.closed
                    ):
                        self._write_locked()  # a post-handshake message the peer expects an answer to
                if n < 0 or n < raw.nbytes:
                    break
        except EOFError:
            self._deliver(frames)
            self.close(None)
            return
        except ProtocolError as exc:
            log.error("closing connection from %s: %s", self.peer or "peer", exc)
            self._deliver(frames)
            self.close(exc)
            return
        except OSError as exc:
            self._deliver(frames)
            self.close(None if exc.errno in (errno.ECONNRESET, errno.EPIPE) else exc)
            return
        self._deliver(frames)

    def close(self, exc: BaseException | None = None) -> None:
        """Close the socket and report it once (loop thread)."""
        self._cipher = None
        super().close(exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connecting" if self._connecting else "open"
        return f"<TlsLink peer={self.peer!r} {state} outgoing={self.outgoing} queued={len(self._pending)}>"
