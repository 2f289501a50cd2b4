@0xa1c3e5f7091b2d60;
using M = import "/monarch/actor.capnp";
enum Mode { fast @0; safe @1; }
struct Item { id @0 :UInt32; name @1 :Text; }
struct Job {
  id @0 :UInt64;
  mode @1 :Mode = safe;
  items @2 :List(Item);
  union { none @3 :Void; text @4 :Text; }
}
interface Store $M.actor {
  put @0 (job :Job) -> (ok :Bool);
  get @1 (id :UInt64) -> (job :Job);
  count @2 () -> (n :UInt32);
}
interface Relay $M.actor {
  # Sends a job on as received: back to its caller, or through another relay.
  echo @0 (job :Job) -> (job :Job);
  relay @1 (job :Job, to :M.ActorRef(Relay)) -> (job :Job);
}
