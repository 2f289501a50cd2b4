"""Log forwarding: every proc's stdout, stderr and log records reach the client, prefixed.

Proc side (:func:`install_proc_logs`, called first thing by ``proc_main``):

- Each proc writes a log file on its host (``$MONARCH_LOG_DIR``, default
  ``<tmp>/monarch-logs-<uid>``; the path comes from its spawner in ``MONARCH_PROC_LOG_FILE``).
  Python's ``sys.stdout``/``sys.stderr`` write each line to that file with ``os.write`` before
  ``write`` returns, and ``faulthandler`` dumps (segfaults, aborts) go to the file's descriptor
  directly, so a crash loses nothing there.
- File descriptors 1 and 2 become pipes read by a thread of the proc (output of C code and of
  subprocesses): what it reads goes to the file and to the client.
- A line written through ``sys.stdout``/``sys.stderr`` is sent to the client's log sink from the
  writing thread, on the same ordered link as that thread's later messages: output printed by an
  endpoint before it returns reaches the client before the call's reply does.

Client side (:class:`LogSink`, one per client process, a port of its router): prints each line
on the client's own stdout or stderr (the stream the proc wrote to), prefixed
``[host rank=R pid=P]``; with an aggregation window, lines that differ only in numbers, hex ids
or ranks are folded into one line per window: ``[4 similar log lines, ranks 0-3 on h1] loss
0.123``. A proc that fails has its log file and last lines named in its failure reason.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import pickle
import re
import select
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._transport.frame import Envelope
from .._transport.messages import Kind
from .router import Sink

__all__ = [
    "ENV_FILE",
    "ENV_RANK",
    "ENV_SINK",
    "LogMode",
    "LogSink",
    "client_sink",
    "install_proc_logs",
    "log_dir",
    "log_tail",
    "new_log_path",
]

ENV_SINK = "MONARCH_LOG_SINK"
"""``ADDR#PORT`` of the client's log sink, set by the root client for every proc it spawns."""
ENV_FILE = "MONARCH_PROC_LOG_FILE"
"""The proc's log file, chosen by its spawner."""
ENV_RANK = "MONARCH_PROC_RANK"
"""The proc's rank in its spawn (its position among the procs of one ``spawn_procs``)."""
ENV_RANK_BASE = "MONARCH_PROC_RANK_BASE"
"""Added to the rank a spawner gives its procs (a host's first rank in a multi-host mesh)."""
ENV_DIR = "MONARCH_LOG_DIR"
"""Where procs' log files go on each host (default ``<tmp>/monarch-logs-<uid>``)."""

TAIL_LINES = 30  # last lines of a failed proc's log file quoted in its failure reason
_TAIL_BYTES = 16384
_PIPE_CHUNK = 65536
_MAX_LINE = 65536  # a longer unterminated line is sent in pieces
_NO_LEVEL = -1  # a line that is not a log record (print, C output)


# -- paths ------------------------------------------------------------------------------------
def log_dir() -> str:
    """The folder of procs' log files on this host (created, mode 0700)."""
    d = os.environ.get(ENV_DIR) or os.path.join(
        tempfile.gettempdir(), f"monarch-logs-{os.getuid()}"
    )
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def new_log_path(name: str) -> str:
    """A fresh log file path for a proc named ``name`` spawned by this process."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "proc"
    return os.path.join(log_dir(), f"{os.getpid()}-{safe}.log")


def log_tail(path: str, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the log file at ``path`` (empty when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if size > _TAIL_BYTES and text:
        text = text[1:]  # the first one is cut
    return text[-lines:]


def discard_log(path: str | None) -> None:
    """A proc ended cleanly: remove its log file, unless ``$MONARCH_LOG_DIR`` asks to keep logs
    (then every file stays); the default folder goes too once empty (nothing left behind)."""
    if not path or os.environ.get(ENV_DIR):
        return
    try:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))  # fails while another proc's file is there
    except OSError:
        pass


def failure_note(path: str | None) -> str:
    """What a failure reason adds about a proc's log: its file and last lines."""
    if not path:
        return ""
    tail = log_tail(path)
    note = f"; log file {path}"
    if tail:
        note += "; its last lines:\n" + "\n".join("    " + ln for ln in tail)
    return note


# -- proc side --------------------------------------------------------------------------------
class _ProcLogs:
    """The proc's log file, its pipes on fds 1/2, and the link to the client's sink."""

    def __init__(
        self, path: str, sink: tuple[str, int] | None, origin: tuple[str, int, int]
    ) -> None:
        self.path = path
        os.makedirs(
            os.path.dirname(path), mode=0o700, exist_ok=True
        )  # a clean exit may have removed it
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.sink = sink
        self.origin = origin  # host, rank, pid
        self.router: Any = None
        self._local = threading.local()

    def write_file(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            pass

    def forward(self, stream: int, text: str, level: int = _NO_LEVEL) -> None:
        """Send ``text`` (whole lines) to the client's sink from this thread (fire and forget)."""
        sink, router = self.sink, self.router
        if sink is None or router is None or getattr(self._local, "busy", False):
            return
        self._local.busy = True  # the send path may log: that must not loop back here
        try:
            payload = pickle.dumps((self.origin, stream, level, text), protocol=5)
            env = Envelope.new_message()
            env.kind = Kind.REPLY
            env.port = sink[1]
            p = env.init("parts", 1)[0]
            p.length = len(payload)
            env.payload = payload
            router.send(sink[0], env, [], sequenced=False)
        except Exception:
            pass  # the client is gone or unreachable: the file still has the line
        finally:
            self._local.busy = False

    def record_level(self) -> int:
        return int(getattr(self._local, "level", _NO_LEVEL))


class _Stream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a proc: whole lines go to the log file and the client."""

    def __init__(self, logs: _ProcLogs, fd: int, name: str) -> None:
        self._logs = logs
        self._fd = fd
        self._name = name
        self._lock = threading.Lock()
        self._partial = ""

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def buffer(self) -> Any:
        return _Buffer(self)

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            text = self._partial + s
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) < _MAX_LINE:
                self._partial = text
                return len(s)
            if cut == 0:
                cut = len(text)
            self._partial = text[cut:]
            self._emit(text[:cut])
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                text, self._partial = self._partial, ""
                self._emit(text)

    def _emit(self, text: str) -> None:
        self._logs.write_file(text.encode("utf-8", "backslashreplace"))
        self._logs.forward(self._fd, text, self._logs.record_level())


class _Buffer:
    """``sys.stdout.buffer``: bytes written decode into the text stream."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream

    def write(self, b: bytes) -> int:
        self._stream.write(bytes(b).decode("utf-8", "replace"))
        return len(b)

    def flush(self) -> None:
        self._stream.flush()


class _RecordHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that marks the lines it writes with the record's level."""

    def __init__(self, logs: _ProcLogs, stream: Any) -> None:
        super().__init__(stream)
        self._logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        local = self._logs._local
        local.level = record.levelno
        try:
            super().emit(record)
            self.flush()
        finally:
            local.level = _NO_LEVEL


_PROC: _ProcLogs | None = None


def install_proc_logs(name: str) -> _ProcLogs | None:
    """Redirect this proc's output to its log file and the client (see the module); None when
    its spawner chose no log file (a proc started by hand)."""
    global _PROC
    path = os.environ.pop(ENV_FILE, None)
    if not path:
        return None
    sink_s = os.environ.get(ENV_SINK, "")
    sink: tuple[str, int] | None = None
    if "#" in sink_s:
        addr, _, port = sink_s.rpartition("#")
        sink = (addr, int(port))
    try:
        rank = int(os.environ.pop(ENV_RANK, "-1"))
    except ValueError:
        rank = -1
    os.environ.pop(ENV_RANK_BASE, None)
    logs = _ProcLogs(path, sink, (socket.gethostname(), rank, os.getpid()))
    faulthandler.enable(
        file=logs.fd, all_threads=False
    )  # the crashing thread: the tail stays short
    readers = []
    for fd in (1, 2):
        r, w = os.pipe2(os.O_CLOEXEC)
        os.dup2(w, fd)  # the duplicate is inheritable: subprocesses write to the pipe too
        os.close(w)
        readers.append((r, fd))
    sys.stdout = _Stream(logs, 1, "<stdout>")
    sys.stderr = _Stream(logs, 2, "<stderr>")
    threading.Thread(
        target=_pump, args=(logs, readers), name="monarch log pipes", daemon=True
    ).start()
    _PROC = logs
    return logs


def proc_logs() -> _ProcLogs | None:
    """This proc's log forwarding, when installed."""
    return _PROC


def record_handler(logs: _ProcLogs) -> logging.Handler:
    """The proc's logging handler (to ``sys.stderr``, lines marked with their record's level)."""
    return _RecordHandler(logs, sys.stderr)


def _pump(logs: _ProcLogs, readers: list[tuple[int, int]]) -> None:
    """Read what C code and subprocesses write to fds 1/2: to the file and the client."""
    partial = {fd: b"" for _, fd in readers}
    by_r = dict(readers)
    while by_r:
        try:
            ready, _, _ = select.select(list(by_r), [], [])
        except InterruptedError:
            continue
        for r in ready:
            fd = by_r[r]
            try:
                data = os.read(r, _PIPE_CHUNK)
            except OSError:
                data = b""
            if not data:
                del by_r[r]
                continue
            logs.write_file(data)
            buf = partial[fd] + data
            cut = buf.rfind(b"\n") + 1
            if cut == 0 and len(buf) >= _MAX_LINE:
                cut = len(buf)
            partial[fd] = buf[cut:]
            if cut:
                logs.forward(fd, buf[:cut].decode("utf-8", "replace"))


# -- client side ------------------------------------------------------------------------------
@dataclass
class LogMode:
    """How a client shows its procs' output (see ``ProcMesh.logging_option``)."""

    stream_to_client: bool = True
    aggregate_window_sec: float | None = None
    level: int = logging.INFO


_NUM = re.compile(
    r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]*\d[0-9a-fA-F]*\b|[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
)


def line_key(text: str) -> str:
    """What lines folded together share: the text with numbers and hex ids masked."""
    return _NUM.sub("#", text)


def _ranges(ranks: Iterable[int]) -> str:
    out: list[str] = []
    rs = sorted(set(ranks))
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(out)


@dataclass
class _Fold:
    first: str
    count: int = 0
    ranks: dict[str, set[int]] = field(default_factory=dict)


class LogSink(Sink):
    """The client's end of log forwarding: a port of the client's router (see the module).

    Args:
        router: the client's router.
    """

    def __init__(self, router: Any) -> None:
        self.router = router
        self.port = router.new_port(self)
        self.default = LogMode()
        self.modes: dict[str, LogMode] = {}  # by proc address: set by logging_option
        self._lock = threading.Lock()
        self._folds: dict[tuple[int, str], _Fold] = {}
        self._timer: Any = None
        self._window: float | None = None

    @property
    def address(self) -> str:
        """``ADDR#PORT``, what procs find in ``MONARCH_LOG_SINK``."""
        return f"{self.router.addr}#{self.port}"

    def set_mode(self, addrs: Iterable[str], mode: LogMode) -> None:
        """Use ``mode`` for the procs at ``addrs`` (flushes what was being folded)."""
        self.flush()
        with self._lock:
            for a in addrs:
                self.modes[a] = mode

    def deliver(self, env: Any, bufs: list[memoryview]) -> None:
        payload = env.payload
        off = 0
        for p in env.parts:
            chunk = payload[off : off + p.length]
            off += p.length
            try:
                origin, stream, level, text = pickle.loads(chunk)
            except Exception:
                continue
            self._line(origin, int(stream), int(level), str(text))

    def _line(self, origin: tuple[str, int, int], stream: int, level: int, text: str) -> None:
        host, rank, pid = origin
        addr = _ADDR_BY_PID.get((host, pid), "")
        mode = self.modes.get(addr, self.default) if addr else self.default
        if not mode.stream_to_client or (level != _NO_LEVEL and level < mode.level):
            return
        window = mode.aggregate_window_sec
        lines = text.splitlines() or [text]
        if not window:
            out = sys.stdout if stream == 1 else sys.stderr
            who = f"[{host} rank={rank} pid={pid}]" if rank >= 0 else f"[{host} pid={pid}]"
            try:
                out.write("".join(f"{who} {ln}\n" for ln in lines))
                out.flush()
            except (OSError, ValueError):
                pass
            return
        with self._lock:
            for ln in lines:
                fold = self._folds.get((stream, line_key(ln)))
                if fold is None:
                    fold = self._folds[(stream, line_key(ln))] = _Fold(ln)
                fold.count += 1
                fold.ranks.setdefault(host, set()).add(rank)
            if self._timer is None:
                self._timer = self.router.loop.call_soon_threadsafe(self._arm, float(window))

    def _arm(self, window: float) -> None:
        self._timer = self.router.loop.call_later(window, self.flush)

    def flush(self) -> None:
        """Print what the current window folded (any thread)."""
        with self._lock:
            folds, self._folds = self._folds, {}
            timer, self._timer = self._timer, None
        if timer is not None:
            try:
                timer.cancel()
            except Exception:
                pass
        for (stream, _), fold in folds.items():
            out = sys.stdout if stream == 1 else sys.stderr
            where = "; ".join(
                f"ranks {_ranges(r)} on {h}" if len(r) > 1 else f"rank {_ranges(r)} on {h}"
                for h, r in sorted(fold.ranks.items())
            )
            try:
                out.write(f"[{fold.count} similar log lines, {where}] {fold.first}\n")
                out.flush()
            except (OSError, ValueError):
                pass


# (host, pid) -> proc address, told by spawners (the sink learns which mesh a line belongs to)
_ADDR_BY_PID: dict[tuple[str, int], str] = {}
_SINKS: weakref.WeakKeyDictionary[Any, LogSink] = weakref.WeakKeyDictionary()
_SINKS_LOCK = threading.Lock()


def note_proc(host: str, pid: int, addr: str) -> None:
    """Remember that the proc ``pid`` on ``host`` is at ``addr`` (for per-mesh log modes)."""
    _ADDR_BY_PID[(host, pid)] = addr


def client_sink(router: Any) -> LogSink:
    """The log sink of the client whose router is ``router`` (made on first use)."""
    with _SINKS_LOCK:
        sink = _SINKS.get(router)
        if sink is None:
            sink = _SINKS[router] = LogSink(router)
            import atexit

            atexit.register(sink.flush)
        return sink


def flush_client_logs() -> None:
    """Print what every sink of this process was folding."""
    for sink in list(_SINKS.values()):
        sink.flush()
