@0xe1a7c3b5d9f20486;
# RDMA handles in a schema: M.RDMABuffer as a struct field, a list element, a parameter and a result.
using M = import "/monarch/actor.capnp";

struct Shard {
  # A shard of registered memory.
  buffer @0 :M.RDMABuffer;
  # Unset (None) until the owner registers it.
  replicas @1 :List(M.RDMABuffer);
  offset @2 :UInt64;
}

interface Store $M.actor {
  # Owns registered memory and hands out handles.
  handle @0 () -> (buffer :M.RDMABuffer);
  # The handle of the store's memory.
  shard @1 (index :UInt32) -> Shard;
  adopt @2 (buffer :M.RDMABuffer, offset :UInt64) -> (ok :Bool);
  # Pull from another store's memory.
}
