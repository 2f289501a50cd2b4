@0xa1c3e5f7091b2d72;
# Field names that are also attributes of pycapnp's readers and builders (`which`, `schema`,
# `init`, `copy`, `write`, ...): reading or writing them by attribute reaches pycapnp's method,
# not the field. They are read and written by name.
using M = import "/monarch/actor.capnp";

struct Record {
  which @0 :Bool = true;
  schema @1 :Text;
  init @2 :Int32 = 4;
  copy @3 :List(Text);
  write @4 :Data;
  adopt @5 :Record;
  # A struct holding its own type: a received one is compared, shown and sent on without
  # walking its endless chain of defaults.
  disown @6 :Kind;
  union {
    none @7 :Void;
    totalSize @8 :UInt64;
    asReader :group {
      init @9 :UInt8;
      schema @10 :Text;
    }
  }
  enum Kind { which @0; schema @1; }
}

interface Store $M.actor {
  put @0 (which :Record, schema :Text) -> (which :Record);
  get @1 (init :Int32) -> Record;
}
