@0xcd841162be19a6f1;
# Interfaces that extend several interfaces (`extends(A, B)`), a diamond, and a reference
# typed as one base receiving a mesh of the derived interface.
using M = import "/monarch/actor.capnp";

struct Reading {
  value @0 :Float64;
  unit @1 :Text = "s";
}

interface Pinger $M.actor {
  ping @0 (n :UInt32) -> (n :UInt32);
}

interface Reporter $M.actor {
  report @0 () -> (reading :Reading);
  reset @1 ();
}

interface Named $M.actor {
  name @0 () -> (name :Text);
}

interface Sensor extends(Pinger, Reporter) $M.actor {
  # Every endpoint of both parents, and its own.
  calibrate @0 (offset :Float64) -> (reading :Reading);
}

interface Probe extends(Sensor, Named) $M.actor {
  # Sensor's endpoints (and so its parents'), Named's, and its own.
  probe @0 (depth :UInt8) -> (readings :List(Reading));
}

interface Tagger extends(Pinger) $M.actor {
  tag @0 () -> (tag :Text);
}

interface Station extends(Sensor, Tagger) $M.actor {
  # A diamond: Pinger reached through Sensor and through Tagger is one base.
  watch @0 (pinger :M.ActorRef(Pinger), n :UInt32) -> (n :UInt32);
  # Pings the given actor (any mesh whose interface extends Pinger).
}
