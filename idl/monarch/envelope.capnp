@0xd4c2a1e7b3f50911;
# The runtime's wire envelope. Every frame is one standard Cap'n Proto stream-framed Envelope
# message followed by the out-of-band buffers whose lengths it lists (8-byte aligned on the wire).

enum Kind {
  call @0;         # an endpoint call or cast to actors; answer to (replyAddr, replyPort) if set
  reply @1;        # results for a port: `parts` say which rank each result is for
  control @2;      # runtime control (spawn, stop, ...); endpoint names the operation
  supervision @3;  # a failure report travelling up the ownership tree
  port @4;         # a value sent on a user Port
  hello @5;        # first frame on a connection: sender address (+ token MAC on TCP)
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
  flags @16 :UInt32;           # bit 0: stream results, bit 1: explicit response port
  shm @17 :List(UInt64);       # per out-of-band buffer: 0 = inline after this message, else the
                               # id of the shared-memory segment (same host, Unix socket) holding
                               # it from offset 0; segments are announced on the connection first
}

struct Shape {
  labels @0 :List(Text);
  offset @1 :UInt32;
  sizes @2 :List(UInt32);
  strides @3 :List(UInt32);
}
