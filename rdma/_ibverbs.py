"""The ``ibverbs`` backend: RDMA READ/WRITE work requests on RC queue pairs, through pyverbs.

The only backend that needs no remote CPU across hosts and that reaches GPU memory. Layout:

- one verbs context per process (device, protection domain), opened on first use;
- the owner registers every region as a memory region (MR) and publishes its rkey in the handle;
- a reader opens one RC queue pair per owner; the two ends exchange queue-pair numbers, PSNs and
  GIDs over the actor channel (the owner proc's RDMA manager actor, :mod:`monarch.rdma._manager`)
  when both run the actor runtime, else over the owner's RDMA TCP server; off both actor loops;
- transfers are posted as work requests chunked to the port's ``max_msg_sz`` and completed by
  polling a completion queue in the reader's RDMA worker thread (never the owner's, never an
  event loop). The owner's CPU takes no part in a transfer.

pyverbs is imported on first use only; without a device every entry point raises
:class:`~monarch._core.errors.RDMAUnavailableError`. Semantics follow libibverbs
(``ibv_post_send``, ``ibv_poll_cq``) and rdma-core's pyverbs API (44.0 and 59.0).
"""

from __future__ import annotations

import enum
import json
import random
import threading
import time
import types
from typing import Any

from monarch._core.errors import RDMAError, RDMAUnavailableError

from ._config import current
from ._descriptor import Descriptor, VerbsRegion

__all__ = ["IbverbsBackend", "VerbsContext", "get_context", "is_available"]

PORT = 1
_MAX_OUTSTANDING = 16
_WC_NAMES = {
    1: "IBV_WC_LOC_LEN_ERR",
    2: "IBV_WC_LOC_QP_OP_ERR",
    4: "IBV_WC_LOC_PROT_ERR",
    5: "IBV_WC_WR_FLUSH_ERR",
    9: "IBV_WC_REM_INV_REQ_ERR",
    10: "IBV_WC_REM_ACCESS_ERR",
    11: "IBV_WC_REM_OP_ERR",
    12: "IBV_WC_RETRY_EXC_ERR",
    13: "IBV_WC_RNR_RETRY_EXC_ERR",
}


def _enums() -> Any:
    """The ``IBV_*`` constants as plain ints, for pyverbs <= 50 and >= 59 alike."""
    try:  # pyverbs <= ~50 (Debian bookworm's 44.0): a flat module of ints
        import pyverbs.enums as flat

        return flat
    except ImportError:  # pyverbs 59: enum classes in pyverbs.libibverbs_enums
        import pyverbs.libibverbs_enums as le

        ns = types.SimpleNamespace()
        for name in dir(le):
            cls = getattr(le, name)
            if isinstance(cls, type) and issubclass(cls, enum.Enum):
                for member in cls:
                    setattr(ns, member.name, int(member.value))
        return ns


_avail_lock = threading.Lock()
_available: bool | None = None
_unavailable_reason = ""


def is_available() -> bool:
    """Whether pyverbs imports and at least one verbs device exists (checked once per process)."""
    global _available, _unavailable_reason
    with _avail_lock:
        if _available is None:
            try:
                from pyverbs.device import get_device_list

                devices = get_device_list()
                _available = len(devices) > 0
                _unavailable_reason = "" if _available else "no RDMA device found"
            except ImportError as exc:
                _available, _unavailable_reason = False, f"pyverbs is not installed ({exc})"
            except Exception as exc:  # PyverbsRDMAError when no device/driver is present
                _available, _unavailable_reason = False, f"no RDMA device: {exc}"
        return _available


class _Peer:
    """A reader's RC queue pair to one owner, with its own completion queue."""

    __slots__ = ("broken", "cq", "lock", "qp")

    def __init__(self, qp: Any, cq: Any) -> None:
        self.qp = qp
        self.cq = cq
        self.lock = threading.Lock()
        self.broken = False


class VerbsContext:
    """This process's verbs device, protection domain and queue pairs.

    Raises:
        RDMAUnavailableError: pyverbs is missing or no device exists (from the constructor).
    """

    def __init__(self) -> None:
        if not is_available():
            raise RDMAUnavailableError(
                f"the ibverbs RDMA backend is unavailable: {_unavailable_reason}"
            )
        from pyverbs.cq import CQ
        from pyverbs.device import Context, get_device_list
        from pyverbs.pd import PD

        cfg = current()
        self.e = _enums()
        name = cfg.ib_device or get_device_list()[0].name.decode()
        self.device = name
        self.ctx = Context(name=name)
        self.pd = PD(self.ctx)
        self._CQ = CQ
        port = self.ctx.query_port(PORT)
        self.lid = int(port.lid)
        self.max_msg_bytes = int(port.max_msg_sz) or (1 << 30)
        self.gid_index = (
            cfg.ib_gid_index if cfg.ib_gid_index >= 0 else self._pick_gid(int(port.gid_tbl_len))
        )
        self.gid = str(self.ctx.query_gid(PORT, self.gid_index))
        self.access = (
            self.e.IBV_ACCESS_LOCAL_WRITE
            | self.e.IBV_ACCESS_REMOTE_READ
            | self.e.IBV_ACCESS_REMOTE_WRITE
        )
        self._owner_cq = CQ(self.ctx, 16)
        self._owner_qps: list[Any] = []
        self._peers: dict[tuple[str, int, int], _Peer] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<VerbsContext {self.device} gid[{self.gid_index}]={self.gid} peers={len(self._peers)}>"

    def _pick_gid(self, table_len: int) -> int:
        # RoCE v2 over IPv4 uses the IPv4-mapped GID (::ffff:a.b.c.d); InfiniBand uses index 0.
        for index in range(max(table_len, 1)):
            try:
                gid = str(self.ctx.query_gid(PORT, index))
            except Exception:
                continue
            if gid.replace(":", "").startswith("00000000000000000000ffff"):
                return index
        return 0

    # -- owner side ------------------------------------------------------------------------
    def register(self, addr: int, size: int, writable: bool) -> tuple[Any, VerbsRegion]:
        """Register ``size`` bytes at ``addr`` as a memory region readable (and writable) remotely."""
        from pyverbs.mr import MR

        access = self.access if writable else self.e.IBV_ACCESS_REMOTE_READ
        try:
            mr = MR(self.pd, size, access, address=addr)
        except Exception as exc:
            raise RDMAError(f"ibverbs memory registration of {size} bytes failed: {exc}") from exc
        return mr, VerbsRegion(int(mr.rkey), self.gid, self.lid)

    def accept(self, request: bytes) -> bytes:
        """Owner side of queue-pair setup: make a QP connected to the requester's; answer its info.

        Runs on the RDMA manager actor's thread, or on the RDMA server's connection thread.
        """
        remote = json.loads(request)
        qp, psn = self._new_qp(self._owner_cq)
        self._connect(qp, psn, remote)
        with self._lock:
            self._owner_qps.append(qp)
        return json.dumps(self._info(qp, psn)).encode()

    # -- shared ------------------------------------------------------------------------------
    def _new_qp(self, cq: Any) -> tuple[Any, int]:
        from pyverbs.qp import QP, QPCap, QPInitAttr

        cap = QPCap(max_send_wr=64, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
        # Created bare (RESET): a QP created with a QPAttr lands in INIT without remote access.
        qp = QP(self.pd, QPInitAttr(qp_type=self.e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
        return qp, random.getrandbits(24)

    def _info(self, qp: Any, psn: int) -> dict[str, Any]:
        return {"qpn": int(qp.qp_num), "psn": psn, "gid": self.gid, "lid": self.lid}

    def _connect(self, qp: Any, psn: int, remote: dict[str, Any]) -> None:
        from pyverbs.addr import GID, AHAttr, GlobalRoute
        from pyverbs.qp import QPAttr

        attr = QPAttr(port_num=PORT)
        attr.qp_access_flags = self.access
        attr.path_mtu = self.e.IBV_MTU_1024
        attr.max_dest_rd_atomic = 1
        attr.max_rd_atomic = 1
        attr.min_rnr_timer = 12
        attr.timeout = 14  # 4.096 us * 2**14 = 67 ms per try
        attr.retry_cnt = 7
        attr.rnr_retry = 7
        route = GlobalRoute(dgid=GID(remote["gid"]), sgid_index=self.gid_index)
        attr.ah_attr = AHAttr(port_num=PORT, is_global=1, gr=route, dlid=int(remote["lid"]))
        attr.dest_qp_num = int(remote["qpn"])
        attr.rq_psn = psn
        attr.sq_psn = int(remote["psn"])
        qp.to_rts(attr)

    # -- reader side ---------------------------------------------------------------------------
    def peer(self, desc: Descriptor, deadline: float) -> _Peer:
        """The connected queue pair to ``desc``'s owner, set up on first use."""
        from ._manager import ManagerGone, control_via_manager, manager_of
        from ._tcp import OP_CONNECT, control_request

        key = (desc.tcp_host, desc.tcp_port, desc.start_time)
        with self._lock:
            peer = self._peers.get(key)
            if peer is not None and not peer.broken:
                return peer
        cq = self._CQ(self.ctx, 2 * _MAX_OUTSTANDING)
        qp, psn = self._new_qp(cq)
        request = json.dumps(self._info(qp, psn)).encode()
        answer: bytes | None = None
        if desc.manager and manager_of(desc) is not None:
            # Monarch's way: the exchange travels as actor messages to the owner proc's manager.
            try:
                answer = control_via_manager(desc, "connect_qp", (request,), deadline)
            except ManagerGone:
                answer = None  # the owner's TCP server answers instead
        if answer is None:
            answer = control_request(desc, OP_CONNECT, request, deadline)
        try:
            self._connect(qp, psn, json.loads(answer))
        except Exception as exc:
            raise RDMAError(f"ibverbs queue pair setup with {desc.owner} failed: {exc}") from exc
        peer = _Peer(qp, cq)
        with self._lock:
            self._peers[key] = peer
        return peer

    def transfer(
        self,
        desc: Descriptor,
        offset: int,
        local_addr: int,
        size: int,
        write: bool,
        deadline: float,
    ) -> None:
        """Post chunked RDMA READ/WRITE work requests and poll until all complete.

        Raises:
            RDMAError: a work completion failed (``IBV_WC_REM_ACCESS_ERR`` for a bad key or a
                dropped region, ``IBV_WC_RETRY_EXC_ERR`` for a dead owner) or the deadline passed.
        """
        from pyverbs.mr import MR
        from pyverbs.wr import SGE, SendWR

        if desc.verbs is None:
            raise RDMAUnavailableError(
                f"the owner {desc.owner} registered no ibverbs memory region"
            )
        peer = self.peer(desc, deadline)
        access = self.e.IBV_ACCESS_LOCAL_WRITE
        try:
            local_mr = MR(self.pd, size, access, address=local_addr)
        except Exception as exc:
            raise RDMAError(f"ibverbs registration of local memory failed: {exc}") from exc
        opcode = self.e.IBV_WR_RDMA_WRITE if write else self.e.IBV_WR_RDMA_READ
        chunk = self.max_msg_bytes  # rxe does not enforce max_msg_sz; hardware does: chunk anyway
        offsets = list(range(0, size, chunk))
        with peer.lock:
            try:
                pending = 0
                for i, off in enumerate(offsets):
                    length = min(chunk, size - off)
                    wr = SendWR(
                        wr_id=i,
                        opcode=opcode,
                        num_sge=1,
                        sg=[SGE(local_addr + off, length, local_mr.lkey)],
                        send_flags=self.e.IBV_SEND_SIGNALED,
                    )
                    wr.set_wr_rdma(desc.verbs.rkey, desc.addr + offset + off)
                    peer.qp.post_send(wr)
                    pending += 1
                    last = i == len(offsets) - 1
                    while pending >= _MAX_OUTSTANDING or (last and pending):
                        pending -= self._poll(peer, pending, deadline, desc)
            except RDMAError:
                peer.broken = True  # a failed completion moves the QP to the error state
                raise
            except Exception as exc:
                peer.broken = True
                raise RDMAError(f"ibverbs transfer with {desc.owner} failed: {exc}") from exc
            finally:
                if peer.broken:
                    self._discard(peer)
                local_mr.close()

    def _poll(self, peer: _Peer, pending: int, deadline: float, desc: Descriptor) -> int:
        spins = 0
        while True:
            polled, wcs = peer.cq.poll(num_entries=pending)
            if polled > 0:
                for wc in wcs[:polled]:
                    if wc.status != self.e.IBV_WC_SUCCESS:
                        name = _WC_NAMES.get(int(wc.status), f"status {wc.status}")
                        raise RDMAError(f"RDMA work request to {desc.owner} failed: {name}")
                return int(polled)
            if time.monotonic() > deadline:
                raise RDMAError(f"RDMA transfer with {desc.owner} timed out")
            spins += 1
            time.sleep(0 if spins < 1000 else 0.0002)

    def _discard(self, peer: _Peer) -> None:
        with self._lock:
            for key, value in list(self._peers.items()):
                if value is peer:
                    del self._peers[key]
        try:
            peer.qp.close()
            peer.cq.close()
        except Exception:
            pass


_ctx_lock = threading.Lock()
_ctx: VerbsContext | None = None


def get_context() -> VerbsContext:
    """This process's verbs context, opened on first use.

    Raises:
        RDMAUnavailableError: no pyverbs or no device.
    """
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            _ctx = VerbsContext()
        return _ctx


class IbverbsBackend:
    """Transfers with RDMA READ/WRITE on RC queue pairs (any host; no remote CPU)."""

    name = "ibverbs"

    @staticmethod
    def can_reach(desc: Descriptor) -> bool:
        """Whether both ends have verbs: the owner published an MR and this process has a device."""
        return desc.verbs is not None and is_available()

    def transfer(
        self,
        desc: Descriptor,
        offset: int,
        local_addr: int,
        size: int,
        write: bool,
        deadline: float,
    ) -> None:
        """See :meth:`VerbsContext.transfer`.

        Raises:
            RDMAUnavailableError: no device here.
            RDMAError: the transfer failed.
        """
        get_context().transfer(desc, offset, local_addr, size, write, deadline)
