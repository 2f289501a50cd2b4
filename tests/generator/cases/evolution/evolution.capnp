@0xd3c1a0e5f7b92841;
# Version 1 of a schema whose version 2 is evolution_new.capnp (a new union member, new fields).
# The two have different file ids so that one process can load both; their structs have the same
# layout as if they were one file's two versions. A version-1 receiver sends on what version 2
# wrote (tests/generator/test_schema_cases.py).
using M = import "/monarch/actor.capnp";

struct Item {
  id @0 :UInt32;
}

struct Job {
  id @0 :UInt64;
  items @1 :List(Item);
  union {
    none @2 :Void;
    text @3 :Text;
  }
}

interface Relay $M.actor {
  echo @0 (job :Job) -> (job :Job);
  echoList @1 (jobs :List(Job)) -> (jobs :List(Job));
  echoItems @2 (items :List(Item)) -> (items :List(Item));
}
