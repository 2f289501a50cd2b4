"""Actor hosting in every process: spawning actors, delivering calls, forwarding casts down
their tree, collecting replies back up it, and reporting failures to owners.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._core.errors import SupervisionError
from .._core.failure import MeshFailure
from .._core.shape import Extent, Point, Shape
from .._transport.codec import Codec
from .._transport.frame import Envelope
from .._transport.messages import END_OF_STREAM_BIT, PICKLED_BIT, STREAM_BIT, ControlOp, Kind
from .._transport.pickle_codec import PICKLE_CODEC, dumps, loads
from .endpoint import EndpointSpec
from .instance import ActorInstance
from .outgoing import ReplyPart
from .router import Router, Sink
from .wire_errors import decode_error, encode_error

if TYPE_CHECKING:
    from .context import CreatorInstance
    from .port import Port
    from .supervision import Supervisor

__all__ = ["ActorHost", "Msg", "decode_error", "encode_error", "pickle_spawn"]

log = logging.getLogger("monarch.hosting")

# calls to a mesh whose spawn has not arrived yet (it may come from another sender, on another
# link) wait for it, within these bounds
_PARKED_MAX = 65536
_PARK_TIMEOUT_S = 3.0


class _NeedsImport(Exception):
    """Decoding a spawn request would import a module (see :class:`_ImportedOnly`)."""


class _ImportedOnly(pickle.Unpickler):
    """Unpickles only with modules already imported: an actor class whose module is not (a
    test module or a training script that imports torch, seconds under load) is decoded off
    the event loop instead, which meanwhile keeps serving heartbeats and handshakes."""

    def find_class(self, module: str, name: str) -> Any:
        if module not in sys.modules:
            raise _NeedsImport(module)
        return super().find_class(module, name)


def _spawn_fields(decoded: Any) -> tuple[Any, ...]:
    """The nine fields of a decoded spawn request (see :func:`pickle_spawn`).

    Raises:
        ValueError: it is not a tuple of nine.
    """
    if not isinstance(decoded, tuple) or len(decoded) != 9:
        raise ValueError("a spawn request is a tuple of nine fields")
    return decoded


class _ShapeInfo:
    __slots__ = ("extent", "pos")

    def __init__(self, extent: Extent, pos: dict[int, int]) -> None:
        self.extent = extent
        self.pos = pos


class Msg:
    """A call delivered to one local actor (decoded envelope fields)."""

    __slots__ = (
        "answered", "bufs", "endpoint", "flags", "host", "mesh_id", "payload", "pos", "rank", "reply_addr", "reply_port", "shape",
    )

    def __init__(
        self,
        host: ActorHost,
        endpoint: str,
        payload: Any,
        bufs: list[memoryview],
        reply_addr: str,
        reply_port: int,
        pos: int,
        shape: _ShapeInfo,
        flags: int,
        rank: int,
        mesh_id: str = "",
    ) -> None:
        self.host = host
        self.mesh_id = mesh_id
        self.endpoint = endpoint
        self.payload = payload
        self.bufs = bufs
        self.reply_addr = reply_addr
        self.reply_port = reply_port
        self.pos = pos
        self.shape = shape
        self.flags = flags
        self.rank = rank
        self.answered = False  # its caller was already given a final answer (a refusal)

    def message_rank(self) -> Point:
        return Point(self.pos, self.shape.extent)

    def decode_args(self, spec: EndpointSpec) -> tuple[tuple[Any, ...], dict[str, Any]]:
        codec: Codec = PICKLE_CODEC if self.flags & PICKLED_BIT else spec.codec or PICKLE_CODEC
        return codec.decode_call(memoryview(self.payload), self.bufs)

    def port(self, spec: EndpointSpec) -> Port[Any]:
        return self.host.port_factory(self.reply_addr, self.reply_port, self.pos, spec.codec)


class Collector(Sink):
    """Gathers the results of one cast at a forwarding proc and sends them up as one reply."""

    def __init__(self, host: ActorHost, dest_addr: str, dest_port: int, expected: dict[str, set[int]]) -> None:
        self.host = host
        self.dest_addr = dest_addr
        self.dest_port = dest_port
        self.expected = expected
        self.remaining = sum(len(v) for v in expected.values())
        self.parts: list[tuple[int, bool, Any, list[memoryview]]] = []
        self.lock = threading.Lock()
        self.port = 0

    def waits_on(self, addr: str) -> bool:
        return bool(self.expected.get(addr))

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        payload = env.payload
        off = 0
        bi = 0
        done = False
        with self.lock:
            for p in env.parts:
                n, nb = p.length, p.buffers
                self.parts.append((p.rank, p.error, payload[off : off + n], bufs[bi : bi + nb]))
                off += n
                bi += nb
                if p.last:
                    for s in self.expected.values():
                        s.discard(p.rank)
                    self.remaining -= 1
            done = self.remaining <= 0
        if done:
            self._flush()

    def peer_lost(self, addr: str, reason: str) -> None:
        with self.lock:
            missing = sorted(self.expected.get(addr, ()))
            for pos in missing:
                payload, bufs = encode_error(SupervisionError.proc_failed(f"on proc {addr}", reason), "")
                self.parts.append((pos, True, payload, list(bufs)))
            self.remaining -= len(missing)
            self.expected[addr] = set()
            done = self.remaining <= 0
        if done:
            self._flush()

    def _flush(self) -> None:
        self.host.router.close_port(self.port)
        env = Envelope.new_message()
        env.kind = Kind.REPLY
        env.port = self.dest_port
        parts = env.init("parts", len(self.parts))
        chunks: list[bytes] = []
        allbufs: list[Any] = []
        for i, (rank, err, payload, bufs) in enumerate(self.parts):
            p = parts[i]
            p.rank = rank
            p.error = err
            p.length = len(payload)
            p.buffers = len(bufs)
            p.last = True
            chunks.append(payload)
            allbufs.extend(bufs)
        env.payload = b"".join(bytes(c) for c in chunks)
        try:
            self.host.router.send(self.dest_addr, env, allbufs, sequenced=False)
        except Exception as exc:
            log.error("cannot return cast results to %s: %s", self.dest_addr, exc)


class ActorHost:
    """Hosts the actors of one process and handles calls, spawns, stops and failures.

    Args:
        router: this process's router.
        supervisor: where actor failures are reported (to the owner of their mesh).
        proc_mesh_factory: makes the one-proc ProcMesh of this process (``this_proc()``).
        port_factory: makes the explicit response port of a call ``(addr, port, rank, codec)``.
        on_proc_fails: called with a cause when a ``BaseException`` ends this process.
    """

    def __init__(
        self,
        router: Router,
        supervisor: Supervisor,
        *,
        proc_mesh_factory: Callable[[], Any],
        port_factory: Callable[[str, int, int, Codec | None], Port[Any]],
        on_proc_fails: Callable[[str], None],
    ) -> None:
        self.router = router
        self.supervisor = supervisor
        self.meshes: dict[str, dict[int, ActorInstance]] = {}
        self.mesh_names: dict[str, str] = {}
        self._shapes: dict[tuple[Any, ...], _ShapeInfo] = {}
        self._parked: dict[str, list[Msg]] = {}  # calls that arrived before their mesh's spawn
        self._parked_count = 0
        # spawns that arrived but could not be decoded (the actor's module is not importable
        # here, say): mesh id -> why, so its calls are refused at once with the cause
        self._failed_spawns: dict[str, str] = {}
        # spawns being decoded off the loop (their module is importing): mesh id -> the stop
        # requests (reply address, port) that arrived meanwhile, run once the actors exist
        self._decoding: dict[str, list[tuple[str, int]]] = {}
        self._proc_mesh_factory = proc_mesh_factory
        self.port_factory = port_factory
        self._this_proc: Any = None
        self.hostname = socket.gethostname()
        self._on_proc_fails = on_proc_fails
        self.on_failure_report: Callable[[ActorInstance, MeshFailure], None] | None = None
        router.set_call_handler(self.on_call)
        router.handle_control(ControlOp.SPAWN, self._on_spawn)
        router.handle_control(ControlOp.STOP_MESH, self._on_stop_mesh)

    def __repr__(self) -> str:
        n = sum(len(m) for m in self.meshes.values())
        return f"<ActorHost {self.router.name!r} meshes={len(self.meshes)} actors={n}>"

    def this_proc_mesh(self) -> Any:
        if self._this_proc is None:
            self._this_proc = self._proc_mesh_factory()
        return self._this_proc

    # -- calls --------------------------------------------------------------------------------
    def _shape_info(self, env: Any) -> _ShapeInfo:
        s = env.shape
        key = (tuple(s.labels), s.offset, tuple(s.sizes), tuple(s.strides))
        info = self._shapes.get(key)
        if info is None:
            shape = Shape(key[0], key[1], key[2], key[3])
            info = _ShapeInfo(shape.extent, {r: i for i, r in enumerate(shape.ranks())})
            if len(self._shapes) > 4096:
                self._shapes.clear()
            self._shapes[key] = info
        return info

    def on_call(self, env: Any, bufs: list[memoryview]) -> None:
        """A call or cast arrived (loop thread): forward it down its tree, then deliver it."""
        mesh_id = env.actor
        ranks = list(env.ranks)
        info = self._shape_info(env)
        reply_addr = env.replyAddr
        reply_port = env.replyPort
        flags = env.flags
        forward = env.forward
        if reply_addr and not (flags & STREAM_BIT):
            expected: dict[str, set[int]] = {}
            if len(ranks) + len(forward) > 1:
                mine = {info.pos[r] for r in ranks}
                expected[self.router.addr] = mine
                for hop in forward:
                    expected.setdefault(hop.addr, set()).update(_subtree_positions(hop, info))
                col = Collector(self, reply_addr, reply_port, expected)
                col.port = self.router.new_port(col)
                reply_addr, reply_port = self.router.addr, col.port
        for hop in forward:
            out = Envelope.new_message()
            out.kind = Kind.CALL
            out.origin = env.origin
            out.seq = hop.seq
            out.actor = mesh_id
            out.ranks = hop.ranks
            out.endpoint = env.endpoint
            out.replyAddr = reply_addr
            out.replyPort = reply_port
            out.encoding = env.encoding
            out.payload = env.payload
            out.buffers = env.buffers
            out.forward = hop.forward
            out.shape = env.shape
            out.sender = env.sender
            out.flags = flags
            try:
                self.router.send(hop.addr, out, list(bufs), seq=hop.seq)
            except Exception as exc:
                self.router.mark_dead(hop.addr, str(exc))
        if not ranks:
            return
        actors = self.meshes.get(mesh_id)
        payload = env.payload
        endpoint = env.endpoint
        first = True
        for r in ranks:
            inst = actors.get(r) if actors is not None else None
            mbufs = bufs if first else [memoryview(bytearray(b)) for b in bufs]
            first = False
            msg = Msg(self, endpoint, payload, mbufs, reply_addr, reply_port, info.pos.get(r, 0), info, flags, r, mesh_id)
            if inst is not None:
                inst.post(msg)
            elif actors is None:
                self._park(msg)  # a mesh being spawned: its spawn (from another sender) is on its way
            else:
                self.refuse(msg, SupervisionError(f"no actor {mesh_id}[{r}] on {self.router.name}"))

    def _park(self, msg: Msg) -> None:
        """Keep a call to a mesh this process has not heard of until its spawn arrives, within
        bounds: at most ``_PARKED_MAX`` calls, each for at most ``_PARK_TIMEOUT_S`` seconds."""
        failed = self._failed_spawns.get(msg.mesh_id)
        if failed is not None:
            self.refuse(msg, SupervisionError(f"no actor {msg.mesh_id}[{msg.rank}] on {self.router.name}: {failed}"))
            return
        parked = self._parked.setdefault(msg.mesh_id, [])
        if self._parked_count >= _PARKED_MAX:
            self.refuse(msg, SupervisionError(f"no actor {msg.mesh_id}[{msg.rank}] on {self.router.name}"))
            return
        if not parked:
            self.router.loop.call_later(_PARK_TIMEOUT_S, self._unpark_expired, msg.mesh_id)
        parked.append(msg)
        self._parked_count += 1

    def _unpark_expired(self, mesh_id: str) -> None:
        if mesh_id in self._decoding:  # its spawn arrived and its module is importing: wait on
            self.router.loop.call_later(_PARK_TIMEOUT_S, self._unpark_expired, mesh_id)
            return
        for msg in self._parked.pop(mesh_id, []):
            self._parked_count -= 1
            self.refuse(msg, SupervisionError(f"no actor {mesh_id}[{msg.rank}] on {self.router.name} (its spawn never arrived)"))

    def reply(self, msg: Msg, spec: EndpointSpec | None, value: Any, exc: BaseException | None, *, last: bool) -> None:
        """Send one result (or error) for ``msg`` to its reply port (any thread); nothing once
        its caller was refused (the actor failed while handling it)."""
        if not msg.reply_addr or msg.answered:
            return
        payload: Any
        bufs: list[Any]
        if exc is not None:
            name = self.mesh_names.get(msg.mesh_id, msg.mesh_id)
            payload, bufs = encode_error(exc, f"{name}[{msg.rank}]", f"{name}.{msg.endpoint}")
            err = True
        else:
            codec: Codec = (
                spec.codec if spec is not None and not msg.flags & PICKLED_BIT else None
            ) or PICKLE_CODEC
            try:
                payload, bufs = codec.encode_result(value)
            except Exception as enc_exc:
                payload, bufs = encode_error(
                    TypeError(f"result of endpoint {msg.endpoint!r} cannot be encoded: {enc_exc}"), ""
                )
                err = True
            else:
                err = False
        self.send_part(msg.reply_addr, msg.reply_port, msg.pos, err, payload, bufs, last)

    def reply_end(self, msg: Msg, spec: EndpointSpec) -> None:
        """Mark the end of a streaming endpoint's results."""
        if msg.reply_addr and not msg.answered:
            self.send_part(msg.reply_addr, msg.reply_port, msg.pos, False, b"", [], True, empty=True)

    def send_part(
        self, addr: str, port: int, pos: int, err: bool, payload: Any, bufs: list[Any], last: bool, empty: bool = False
    ) -> None:
        """Send one result part to port ``port`` of ``addr`` (any thread; never raises).

        Args:
            pos: the position of the answering rank in the called mesh.
            err: ``payload`` is an encoded error (``wire_errors.encode_error``).
            last: the last part of this rank (streams send several).
            empty: an end-of-stream marker carrying no value.
        """
        msg = ReplyPart(port, pos, err, last, END_OF_STREAM_BIT if empty else 0, b"" if empty else payload)
        try:
            self.router.send(addr, msg, bufs, sequenced=False)
        except SupervisionError as exc:
            if err or empty:
                log.warning("cannot deliver a result to %s: %s", addr, exc)
                return
            # a result over the frame limit: the caller gets that error instead of no answer
            error_payload, error_bufs = encode_error(exc, "")
            self.send_part(addr, port, pos, True, error_payload, error_bufs, last)
        except Exception as exc:
            log.warning("cannot deliver a result to %s: %s", addr, exc)

    def refuse(self, msg: Msg, exc: BaseException) -> None:
        """Answer a call that cannot be handled with ``exc`` (if it has a reply port), once."""
        if msg.reply_addr and not msg.answered:
            msg.answered = True
            if isinstance(exc, SupervisionError):
                exc = exc.for_call(f"{self.mesh_names.get(msg.mesh_id, msg.mesh_id)}.{msg.endpoint}")
            payload, bufs = encode_error(exc, "")
            self.send_part(msg.reply_addr, msg.reply_port, msg.pos, True, payload, bufs, True)

    # -- lifecycle ---------------------------------------------------------------------------
    def _on_spawn(self, env: Any, bufs: list[memoryview]) -> None:
        try:
            decoded = _spawn_fields(_ImportedOnly(io.BytesIO(env.payload), buffers=bufs).load())
        except _NeedsImport:
            self._decode_off_loop(env.actor, env.origin, bytes(env.payload), [bytes(b) for b in bufs])
            return
        except Exception as exc:
            self._spawn_failed(env.actor, env.origin, exc)
            return
        self.spawn_local(*decoded)

    def _decode_off_loop(self, mesh_id: str, origin: str, payload: bytes, bufs: list[bytes]) -> None:
        """Decode a spawn whose actor module must be imported on a thread of its own (copies of
        the frame's bytes: its buffers are reused), then spawn on the loop. Calls to the mesh
        park meanwhile, without the park timeout; stop requests wait for the actors."""
        self._decoding[mesh_id] = []

        def decode() -> None:
            try:
                decoded = _spawn_fields(loads(payload, [memoryview(b) for b in bufs]))
            except BaseException as exc:  # reported on the loop, like any bad spawn
                self.router.call_on_loop(self._spawn_decoded, mesh_id, origin, None, exc)
                return
            self.router.call_on_loop(self._spawn_decoded, mesh_id, origin, decoded, None)

        threading.Thread(target=decode, name=f"monarch spawn {mesh_id}", daemon=True).start()

    def _spawn_decoded(self, mesh_id: str, origin: str, decoded: Any, exc: BaseException | None) -> None:
        stops = self._decoding.pop(mesh_id, [])
        if exc is not None:
            self._spawn_failed(mesh_id, origin, exc)
        else:
            self.spawn_local(*decoded)
        for reply_addr, reply_port in stops:
            self._stop_mesh(mesh_id, reply_addr, reply_port)

    def _spawn_failed(self, mesh_id: str, origin: str, exc: BaseException) -> None:
        log.error("cannot decode a spawn request from %s: %s", origin, exc)
        why = f"its spawn could not be decoded here ({type(exc).__name__}: {exc})"
        self._failed_spawns[mesh_id] = why
        while len(self._failed_spawns) > _PARKED_MAX:  # bounded: the oldest first
            del self._failed_spawns[next(iter(self._failed_spawns))]
        for msg in self._parked.pop(mesh_id, []):
            self._parked_count -= 1
            self.refuse(msg, SupervisionError(f"no actor {mesh_id}[{msg.rank}] on {self.router.name}: {why}"))

    def spawn_local(
        self, mesh_id: str, name: str, cls: type, args: Any, kwargs: Any, points: list[int], extent: Extent, owner: str,
        creator: CreatorInstance | None = None,
    ) -> None:
        """Create actors in this process (``this_proc().spawn``); call on the loop thread."""
        actors = self.meshes.setdefault(mesh_id, {})
        self.mesh_names[mesh_id] = name
        for r in points:
            actors[r] = ActorInstance(self, mesh_id, name, Point(r, extent), cls, args, kwargs, owner, creator)
        for msg in self._parked.pop(mesh_id, []):  # calls that arrived before this spawn, in order
            self._parked_count -= 1
            inst = actors.get(msg.rank)
            if inst is None:
                self.refuse(msg, SupervisionError(f"no actor {mesh_id}[{msg.rank}] on {self.router.name}"))
            else:
                inst.post(msg)

    def _on_stop_mesh(self, env: Any, bufs: list[memoryview]) -> None:
        mesh_id = env.actor
        if mesh_id in self._decoding:  # its actors do not exist yet: stop them once they do
            self._decoding[mesh_id].append((env.replyAddr, env.replyPort))
            return
        self._stop_mesh(mesh_id, env.replyAddr, env.replyPort)

    def _stop_mesh(self, mesh_id: str, reply_addr: str, reply_port: int) -> None:
        actors = self.meshes.get(mesh_id, {})
        pending = [a for a in actors.values() if not a.stopped.is_set()]

        def done() -> None:
            if reply_addr:
                self.send_part(reply_addr, reply_port, 0, False, dumps(None)[0], [], True)

        if not pending:
            done()
            return
        remaining = [len(pending)]
        lock = threading.Lock()

        def one_stopped() -> None:
            with lock:
                remaining[0] -= 1
                fire = remaining[0] == 0
            if fire:
                done()

        for a in pending:
            a.on_stopped = one_stopped
            a.stop()

    def actor_failed(self, inst: ActorInstance, cause: str, tb: str, chained: list[Any] | None = None) -> None:
        """Report an actor failure to the process owning its mesh (any thread)."""
        failure = MeshFailure(
            mesh_name=inst.name,
            ranks=[inst.rank.rank],
            cause=cause,
            traceback=tb,
            host=self.hostname,
            pid=os.getpid(),
            actor=inst.display,
            chained=list(chained or []),
            qualified_actor=f"<{inst.cls.__module__}.{inst.cls.__qualname__} {inst.name}{inst.rank}>",
        )
        self.supervisor.report(inst.owner, inst.mesh_id, failure)
        if self.on_failure_report is not None:
            self.on_failure_report(inst, failure)

    def proc_fails(self, cause: str) -> None:
        """A ``BaseException`` escaped a handler: this whole process fails."""
        self._on_proc_fails(cause)


def _subtree_positions(hop: Any, info: _ShapeInfo) -> set[int]:
    out = {info.pos[r] for r in hop.ranks}
    for sub in hop.forward:
        out |= _subtree_positions(sub, info)
    return out


def pickle_spawn(*parts: Any) -> tuple[bytes, list[Any]]:
    """Payload of a spawn control message (classes by value when not importable)."""
    buffers: list[Any] = []
    data = cloudpickle.dumps(parts, protocol=5, buffer_callback=buffers.append)
    return data, [b.raw() for b in buffers]
