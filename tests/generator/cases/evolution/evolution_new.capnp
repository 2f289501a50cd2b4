@0xd3c1a0e5f7b92842;
# Version 2 of evolution.capnp: a union member (blob), a field (priority) and, in Item, a data
# and a pointer field that version 1 does not know.
using M = import "/monarch/actor.capnp";

struct Item {
  id @0 :UInt32;
  size @1 :UInt64;
  tags @2 :List(Text);
}

struct Job {
  id @0 :UInt64;
  items @1 :List(Item);
  union {
    none @2 :Void;
    text @3 :Text;
    blob @5 :Data;
  }
  priority @4 :Int32;
}

interface Relay $M.actor {
  echo @0 (job :Job) -> (job :Job);
  echoList @1 (jobs :List(Job)) -> (jobs :List(Job));
  echoItems @2 (items :List(Item)) -> (items :List(Item));
}
