@0xa1c3e5f7091b2d41;
# Schema names that collide with Python builtins and keywords.
using M = import "/monarch/actor.capnp";

enum Phase {
  train @0;
  eval @1;
  print @2;
  none @3;
}

struct Step {
  id @0 :UInt32;
  type @1 :Text;
  phase @2 :Phase = eval;
  from @3 :Int32;
  lambda @4 :Float64 = 0.5;
  phases @5 :List(Phase) = [eval, train];
  kind @6 :Kind = print;
  enum Kind { map @0; print @1; }
}

const defaultPhase :Phase = eval;
const phases :List(Phase) = [train, eval];
const input :Text = "stdin";

interface Runner $M.actor {
  eval @0 (phase :Phase = eval, id :UInt32) -> (type :Phase);
  print @1 (from :Step) -> (step :Step);
}
