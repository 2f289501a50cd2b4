@0xa1b2c3d4e5f60718;
using M = import "/monarch/actor.capnp";

interface Base $M.actor {
  ping @0 () -> (pong :Text);
}

interface Derived extends(Base) $M.actor {
  # Adds an endpoint to Base.
  extra @0 (n :Int32) -> (n :Int32);
}
