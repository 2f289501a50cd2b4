@0xcb7342c23106c306;
# Monarch's IDL vocabulary. Import it from a schema as
#   using M = import "/monarch/actor.capnp";
# then mark actor interfaces `$M.actor`, endpoints `$M.stream`, `$M.rref`,
# `$M.explicitResponsePort` or `$M.endpoint(timeoutS = 5.0)`, and Data fields `$M.tensor`; name
# other actors `M.ActorRef(T)`, tensors `M.Tensor` and RDMA handles `M.RDMABuffer`.
# monarch-gen turns every `$M.actor` interface into an abstract actor base class and a typed mesh
# proxy; see monarch.generator.

annotation actor @0xd566b8c0ff4ae03b (interface) :Void;
# This interface is an actor: generate an abstract base class and a mesh proxy for it.

annotation stream @0xf9e7f927197f6269 (method) :Void;
# The endpoint yields several results (the implementation is a generator or async generator).

annotation rref @0x9bd9a32e080787b9 (method) :Void;
# The endpoint returns a distributed tensor kept in the actors (the `rref` adverb).

annotation explicitResponsePort @0xfb5083d12e7ca306 (method) :Void;
# The implementation receives a typed `Port` first and answers on it (maybe later).

struct EndpointOptions {
  # Options of one endpoint, given as `$M.endpoint(timeoutS = 5.0, concurrent = true)`.
  timeoutS @0 :Float64 = 0;
  # Default call timeout in seconds; 0 waits forever.
  concurrent @1 :Bool = false;
  # Async handlers of this endpoint may overlap.
}

annotation endpoint @0xd86be546f3196e00 (method) :EndpointOptions;
# Per-endpoint options.

annotation tensor @0xf33542792c80fc6a (field) :Void;
# This Data field holds a tensor's raw bytes: a `torch.Tensor` in Python (received as a 1-D
# uint8 view; use `Tensor` to keep dtype and shape).

struct Tensor {
  # A dense CPU tensor. Its bytes travel out of band when large: never copied into the message.
  dtype @0 :Text;
  # torch dtype name without the "torch." prefix, e.g. "float32".
  shape @1 :List(Int64);
  strides @2 :List(Int64);
  # In elements, as `torch.Tensor.stride()`.
  data @3 :Data;
  # The elements in storage order; empty when sent out of band.
}

struct ActorRef(T) {
  # A reference to a mesh of actors of interface T; `TMesh` in Python.
  ref @0 :Data;
  # Opaque, written and read by the runtime.
}

struct RDMABuffer {
  # A handle to memory registered in another process: `monarch.rdma.RDMABuffer` in Python.
  # Written and read by monarch.rdma; small enough to send anywhere. The fields describe the
  # owner's registration, so a reader reaches the memory without asking the owner first.
  regionId @0 :UInt64;
  # The owner's registry index of the region.
  key @1 :UInt64;
  # The registration's random key: whoever holds it may read (and write) the region.
  recordAddr @2 :UInt64;
  # Address, in the owner, of the region's 48-byte registration record (checked by cma).
  addr @3 :UInt64;
  # Address, in the owner, of the region's first byte.
  size @4 :UInt64;
  # Length of the region in bytes.
  pid @5 :UInt32;
  # The owner's process id.
  startTime @6 :UInt64;
  # The owner's start time in clock ticks since boot (`/proc/PID/stat` field 22).
  host @7 :Text;
  # Identity of the owner's kernel and pid namespace: equal means cma can reach it.
  writable @8 :Bool;
  # Remote writes are allowed.
  device @9 :Text;
  # "cpu" or "cuda".
  tcpHost @10 :Text;
  # Address of the owner's RDMA TCP server (the tcp backend and the fallback control channel).
  tcpPort @11 :UInt16;
  verbs @12 :Verbs;
  # The ibverbs memory region; unset when the owner has no verbs device.
  owner @13 :Text;
  # A readable name of the owning actor or proc.
  manager @14 :Data;
  # The owner proc's RDMA manager actor (queue-pair setup over actor messages); opaque,
  # written by monarch.rdma; empty when the owner runs outside the actor runtime.

  struct Verbs {
    rkey @0 :UInt32;
    # The memory region's remote key.
    gid @1 :Text;
    # The owner port's GID, as pyverbs prints it.
    lid @2 :UInt16;
    # The owner port's LID (0 on RoCE).
  }
}
