"""The fork server itself (the "zygote"): the loop that runs in its process and the forked proc.

:meth:`monarch._mesh.zygote.ZygoteClient.start` runs :func:`serve` in a fresh interpreter. It
imports what every proc needs (``PRELOAD``), says hello, then forks one proc per spawn request
(:mod:`monarch._mesh.zygote_wire`) and reports each child's exit status. What only some procs
need (``PRELOAD_IDLE``) it imports in a quiet spell between requests (unless started with
``idle_preload=False``), or at once, before the fork, for a request whose ``preload`` field
names it.

Lifetime and safety:

- The zygote and everything it forks carry ``MONARCH_IN_ZYGOTE=1`` in their environment from
  before their interpreter starts; :func:`serve` refuses to run without it and the client
  refuses to start under it, so a ``sitecustomize`` or ``.pth`` file that imports monarch cannot
  chain fork servers. Nothing in this module starts a process at import.
- The zygote is single-threaded when it forks (it reaps children from its select loop on
  ``SIGCHLD``, not from a thread), and refuses a spawn if a preloaded module left a Python thread
  running. Native threads of preloaded libraries must be fork-safe: OpenBLAS (numpy) stops its
  thread pool in a ``pthread_atfork`` handler and restarts it lazily in the child.
- Each forked proc gets ``PR_SET_PDEATHSIG(SIGKILL)``: when the zygote exits, for any reason, its
  children are killed by the kernel. The zygote exits when its control connection closes (the
  client closed it, exited or was killed), after SIGKILLing its live children.
- A forked proc starts from a clean state: default ``SIGINT``/``SIGCHLD`` handlers, no wakeup
  fd, no inherited control descriptors, the requested environment, working directory,
  ``sys.path`` and ``sys.argv``; ``random`` (by CPython) and ``numpy.random`` (here) are reseeded.
  What a fork cannot redo is read from the environment at interpreter start or import (see
  ``STARTUP_ENV``): a spawn whose environment differs there is refused, and the client starts
  that proc from scratch.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import threading

from .zygote_wire import (
    GUARD_ENV,
    K_EXITED,
    K_FAILED,
    K_HELLO,
    K_REFUSED,
    K_SPAWNED,
    MAX_FDS_PER_FRAME,
    MAX_REQUEST_BYTES,
    REPLY,
    STARTUP_ENV,
    FrameReader,
    ProtocolViolation,
    Request,
    parse_request,
    send_frame,
)

__all__ = ["PRELOAD", "PRELOAD_IDLE", "serve"]

# imported before the zygote says hello (every proc needs them) ...
PRELOAD = ("monarch._mesh.proc_main", "monarch._mesh.runtime", "monarch.actor", "uvloop", "ctypes")
# ... and between requests, while no request waits: procs need monarch.config (pydantic, ~0.1 s)
# only when the job sets a MONARCH_* setting, so the first spawn does not wait for it unless its
# request says that the proc will import it (then the zygote imports it once, before that fork)
PRELOAD_IDLE: tuple[str, ...] = ("monarch.config",)
_IDLE_QUIET_S = 0.5  # no request for this long: the zygote is idle


def serve(fd: int, idle_preload: bool = True) -> None:
    """The zygote's main loop: runs in the zygote process, never returns.

    Args:
        fd: the zygote's end of the control socketpair.
        idle_preload: import ``PRELOAD_IDLE`` in quiet spells; False: only when a request's
            ``preload`` names them.
    """
    import importlib

    if os.environ.get(GUARD_ENV) != "1":
        sys.exit(
            f"monarch zygote: {GUARD_ENV}=1 missing from the environment; start it with ZygoteClient.start"
        )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle; it closes us

    def preload(name: str) -> None:
        try:
            importlib.import_module(name)
        except ImportError:
            pass

    # The preloaded modules live as long as any proc: keep them out of the collector's reach, as
    # Python's gc docs advise a pre-fork server (gc.disable early, gc.freeze before forking,
    # gc.enable in the child): no proc's full collection walks them (walking would also touch
    # their pages, undoing fork's copy-on-write sharing), and the imports run without
    # collections (their garbage is a few cycles that the freeze keeps; this loop makes hardly any).
    gc.disable()
    for name in PRELOAD:  # the point: pay the imports once, not in every proc
        preload(name)
    gc.freeze()
    idle = list(PRELOAD_IDLE)  # not imported yet: a request's preload may name them
    quiet = idle_preload  # import them in quiet spells too
    startup_env = [os.environ.get(k) for k in STARTUP_ENV]
    me = os.getpid()

    ctl = socket.socket(fileno=fd)
    ctl.setblocking(True)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wakeup fd does the work
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    reader = FrameReader(ctl, MAX_REQUEST_BYTES, MAX_FDS_PER_FRAME)
    live: set[int] = set()

    def reply(kind: int, a: int, b: int) -> None:
        send_frame(ctl, REPLY.pack(kind, a, b))

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            live.discard(pid)
            reply(K_EXITED, pid, status)

    def handle(body: bytes, fds: list[int]) -> None:
        try:
            req = parse_request(body)
            rid = req.rid
            if len(fds) != 1:
                raise ProtocolViolation(f"spawn request with {len(fds)} descriptors (needs 1)")
            for i, name in enumerate(STARTUP_ENV):
                if req.env.get(name) != startup_env[i]:
                    reply(K_REFUSED, rid, i)
                    return
            wanted = [m for m in req.preload if m in idle]  # what this proc would import
            if wanted:
                for name in wanted:  # once here rather than in each proc
                    idle.remove(name)
                    preload(name)
                gc.freeze()
            if threading.active_count() != 1:
                reply(K_REFUSED, rid, -1)
                return
            try:
                pid = os.fork()
            except OSError as exc:
                reply(K_FAILED, rid, exc.errno or 0)
                return
            if pid == 0:
                _child(req, fds[0], [wake_r, wake_w, *reader.pending_fds()], ctl, me)
            live.add(pid)
            reply(K_SPAWNED, rid, pid)
        finally:
            for f in fds:
                os.close(f)

    try:
        reply(K_HELLO, me, 0)
        while True:
            reap()
            # an idle preload waits for a quiet spell: a client spawning N procs sends its
            # requests one after another, and an import between two of them (pydantic, ~0.1-0.4 s)
            # would delay the rest of that spawn
            ready, _, _ = select.select(
                [ctl.fileno(), wake_r], [], [], _IDLE_QUIET_S if idle and quiet else None
            )
            if not ready:
                preload(idle.pop(0))  # single-threaded: never forks mid-import
                gc.freeze()
                continue
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if ctl.fileno() in ready:
                if not reader.read_some():
                    break
                for body, fds in reader.frames():
                    handle(body, fds)
    except ProtocolViolation as exc:
        print(f"monarch zygote: protocol error, exiting: {exc}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the client is gone
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for pid in live:  # PR_SET_PDEATHSIG would do it too; this is explicit and immediate
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)


def _child(req: Request, fd: int, close: list[int], ctl: socket.socket, zygote: int) -> None:
    """The forked proc: reset what the zygote changed, then run its target. Never returns."""
    code = 1
    try:
        gc.enable()  # the zygote runs without collections (see serve)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ctl.close()
        for f in close:
            try:
                os.close(f)
            except OSError:
                pass
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != zygote:  # the zygote died before the prctl: nobody would kill us
            os._exit(1)
        os.environ.clear()
        os.environ.update(req.env)
        os.environ[GUARD_ENV] = "1"
        os.chdir(req.cwd)
        sys.path[:] = req.path
        argv = [a if a != "{fd}" else str(fd) for a in req.argv]
        import importlib

        module_name, func_name = req.target.split(":")
        module = importlib.import_module(module_name)
        sys.argv = [getattr(module, "__file__", None) or module_name, *argv]
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed()  # a fresh interpreter seeds from the OS; CPython reseeds `random`
        try:
            getattr(module, func_name)(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
