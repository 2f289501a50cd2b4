#!/bin/sh
# Runs inside the QEMU guest as PID 1's child (see build.sh): bring up Soft-RoCE on lo, then run
# the ibverbs data-plane tests with this machine's Python. Results go to $WORK (read-write).
# Filled in by tests/rdma/test_guest_ibverbs.py: @PY@ @REPO@ @WORK@ @PYTEST_ARGS@
WORK=@WORK@
for m in crypto/crc32_generic drivers/infiniband/core/ib_core drivers/infiniband/core/ib_uverbs \
         net/ipv4/udp_tunnel net/ipv6/ip6_udp_tunnel drivers/infiniband/sw/rxe/rdma_rxe; do
  busybox insmod "$K/$m.ko" 2>>"$WORK/guest.log"
done
ip link set lo up
rdma link add rxe0 type rxe netdev lo 2>>"$WORK/guest.log"
rdma link show >>"$WORK/guest.log" 2>&1
cd @REPO@
export PYTHONPATH="$WORK/pyshim" PYTHONDONTWRITEBYTECODE=1 HOME=/run MONARCH_RDMA_IB_DEVICE=rxe0
@PY@ -m pytest -p no:cacheprovider -o timeout=600 -o faulthandler_timeout=600 @PYTEST_ARGS@ \
  --junitxml="$WORK/junit.xml" >"$WORK/pytest.log" 2>&1
echo $? >"$WORK/rc"
