@0xa1c3e5f7091b2d60;
using M = import "/monarch/actor.capnp";
enum Mode { fast @0; careful @1; paranoid @2; }
struct Item { id @0 :UInt32; label @1 :Text; size @2 :UInt64; }
struct Job {
  id @0 :UInt64;
  mode @1 :Mode = careful;
  items @2 :List(Item);
  union { none @3 :Void; text @4 :Text; blob @6 :Data; }
  priority @5 :Int32;
}
struct Extra { x @0 :Int8; }
interface Store $M.actor {
  put @0 (job :Job) -> (ok :Bool);
  get @1 (key :UInt64) -> (job :Job);
  count @2 () -> (n :UInt32);
  drop @3 (id :UInt64) -> ();
}
interface Relay $M.actor {
  # Sends a job on as received: back to its caller, or through another relay.
  echo @0 (job :Job) -> (job :Job);
  relay @1 (job :Job, to :M.ActorRef(Relay)) -> (job :Job);
}
