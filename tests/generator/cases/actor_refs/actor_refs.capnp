@0xa1c3e5f7091b2d45;
using M = import "/monarch/actor.capnp";

struct Roster {
  peers @0 :List(M.ActorRef(Peer));
  union {
    nobody @1 :Void;
    leader @2 :M.ActorRef(Leader);
    peer @3 :M.ActorRef(Peer);
  }
}

interface Leader $M.actor {
  join @0 (peer :M.ActorRef(Peer)) -> (count :UInt32);
  roster @1 () -> (roster :Roster);
  peers @2 () -> (peers :List(M.ActorRef(Peer)));
}

interface Peer $M.actor {
  hello @0 (leader :M.ActorRef(Leader), others :List(M.ActorRef(Peer))) -> (greeted :UInt32);
  ping @1 (n :UInt32) -> (n :UInt32);
}
