@0xd4c2a1e7b3f50911;
# The runtime's wire envelope. Every frame is one standard Cap'n Proto stream-framed Envelope
# message followed by the out-of-band buffers whose lengths it lists (8-byte aligned on the wire).

enum Kind {
  call @0;         # an endpoint call or cast to actors; answer to (replyAddr, replyPort) if set
  reply @1;        # results for a port: `parts` say which rank each result is for
  control @2;      # runtime control (spawn, stop, ...); endpoint names the operation
  supervision @3;  # a failure report travelling up the ownership tree
  port @4;         # a value sent on a user Port
  hello @5;        # first frame on a connection: the sender's address
  shmSegment @6;   # transport only: `segment` is a new shared-memory segment of the sender, its
                   # sealed memfd attached to this frame's bytes (SCM_RIGHTS, Unix sockets)
  shmFree @7;      # transport only: the receiver holds no more views of the sender's `segment`
  shmRetire @8;    # transport only: the sender dropped `segment`; the receiver unmaps it
}

struct Segment {
  # A shared-memory segment of one connection direction (see runtime/_transport/shm.py).
  id @0 :UInt64;    # chosen by the sender, > 0, unique per connection and direction
  size @1 :UInt64;  # bytes mapped by both sides (shmSegment); 0 in shmFree/shmRetire
}

struct Hop {
  # One proc a cast is forwarded to, with the ranks of the destination mesh it hosts and the
  # procs it must forward to in turn. `seq` is fixed at the origin.
  addr @0 :Text;
  seq @1 :UInt64;
  ranks @2 :List(UInt32);
  forward @3 :List(Hop);
}

struct Part {
  # One result inside a reply: for which point of the called mesh, whether it is an error,
  # and how many bytes of the payload and how many out-of-band buffers it takes, in order.
  rank @0 :UInt32;
  error @1 :Bool;
  length @2 :UInt32;
  buffers @3 :UInt32;
  last @4 :Bool;   # the last result of this rank (streams send several)
}

struct Envelope {
  kind @0 :Kind;
  origin @1 :Text;         # address of the proc that originated the message (FIFO key)
  seq @2 :UInt64;          # per (origin, destination proc) sequence number; 0 = unsequenced
  actor @3 :Text;          # destination actor mesh id
  ranks @4 :List(UInt32);  # destination ranks (spawn ranks) hosted by the receiving proc
  endpoint @5 :Text;
  port @6 :UInt64;         # destination port id (reply, port kinds)
  replyAddr @7 :Text;      # where results go ("" = nowhere: broadcast)
  replyPort @8 :UInt64;
  encoding @9 :UInt8;      # 0 pickle, 1 capnp
  payload @10 :Data;
  buffers @11 :List(UInt64);   # lengths of the out-of-band buffers after this message
  forward @12 :List(Hop);      # cast tree below the receiving proc
  shape @13 :Shape;            # the (sliced) mesh the message was sent to: message_rank
  parts @14 :List(Part);
  sender @15 :Text;            # readable name of the sending actor ("client" for the root)
  flags @16 :UInt32;           # MessageFlags: bit 0 stream, bit 1 explicit port, bit 2 end of stream, bit 3 pickled
  shm @17 :List(UInt64);       # per out-of-band buffer: 0 = inline after this message, else the
                               # id of the shared-memory segment (same host, Unix socket) holding
                               # it from offset 0; segments are announced on the connection first
  segment @18 :Segment;        # shmSegment, shmFree, shmRetire frames only
}

struct Shape {
  labels @0 :List(Text);
  offset @1 :UInt32;
  sizes @2 :List(UInt32);
  strides @3 :List(UInt32);
}
