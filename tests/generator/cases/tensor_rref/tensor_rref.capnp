@0xc3f1d2a4b5e69788;
# `$M.rref` endpoints: their mesh proxies get a typed `rref()` returning a tensor handle.
using M = import "/monarch/actor.capnp";

interface Sharder $M.actor {
  shard @0 (n :UInt32, scale :Float64) -> (t :M.Tensor) $M.rref;
  # A tensor of n float32 elements made on each rank: scale * (rank + 1) * arange(n).
  ones @1 (n :UInt32) -> (t :M.Tensor) $M.rref;
  # n float64 elements, each the number of rref calls this actor ran before this one, plus 1.
  count @2 () -> (calls :UInt32);
  # How many rref calls this actor has run (not $M.rref: no rref()).
}
