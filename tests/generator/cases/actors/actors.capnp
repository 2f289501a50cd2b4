@0xd4e5f6a7b8c9d0e1;
using M = import "/monarch/actor.capnp";

struct Config { lr @0 :Float64; }

interface Trainer $M.actor {
  # Trains a model.
  train @0 (steps :UInt32, config :Config) -> (loss :Float64);
  # One training run.
  stats @1 () -> (mean :Float64, count :UInt64);
  losses @2 (n :UInt32) -> (loss :Float64) $M.stream;
  reset @3 ();
  slow @4 (x :Int32) -> (y :Int32) $M.endpoint(timeoutS = 2.5, concurrent = true);
  later @5 (x :Int32) -> (y :Int32) $M.explicitResponsePort;
  peer @6 (other :M.ActorRef(Evaluator)) -> (self :M.ActorRef(Trainer));
  snapshot @7 () -> Config;
  shard @8 (i :UInt32) -> (t :M.Tensor) $M.rref;
  slice @9 () -> ();  # Clashes with a mesh operation: becomes slice_.
}

interface Evaluator $M.actor {
  evaluate @0 (trainer :M.ActorRef(Trainer)) -> (score :Float64);
}
