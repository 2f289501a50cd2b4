@0xb87b4eafc6d9837a;
# A demo of what monarch-gen supports: two actors that reference each other, structs, unions,
# generics, lists of structs, enums, a streaming endpoint and tensor fields.

using M = import "/monarch/actor.capnp";

enum Phase {
  # Where a worker is in its life.
  idle @0;
  training @1;
  evaluating @2;
}

struct Batch {
  # One batch of training data.
  step @0 :UInt64;
  inputs @1 :M.Tensor;   # Input features, float32 [batch, features].
  labels @2 :Data $M.tensor;  # Raw label bytes.
  tags @3 :List(Text);
}

struct Metric {
  # A named measurement.
  name @0 :Text;
  union {
    scalar @1 :Float64;
    count @2 :UInt64;
    text @3 :Text;
  }
}

struct Tagged(T) {
  # A value with a label.
  label @0 :Text;
  value @1 :T;
}

struct Report {
  # What a worker reports after a round.
  worker @0 :UInt32;
  phase @1 :Phase = training;
  metrics @2 :List(Metric);
  best @3 :Tagged(Metric);
  config :group {
    learningRate @4 :Float32 = 0.01;
    momentum @5 :Float32;
  }
}

const defaultRounds :UInt32 = 3;
# Rounds a coordinator runs when not told otherwise.

interface Worker $M.actor {
  # Trains on batches and reports to its coordinator.
  train @0 (batch :Batch) -> (loss :Float64);
  # Run one step on `batch`; returns the loss.
  report @1 () -> Report;
  progress @2 (steps :UInt32) -> (step :UInt32, phase :Phase) $M.stream;
  # Yields once per step.
  setCoordinator @3 (coordinator :M.ActorRef(Coordinator)) -> ();
  echoBlob @4 (blob :Data) -> (blob :Data) $M.endpoint(timeoutS = 30.0);
}

interface Coordinator $M.actor {
  # Owns a mesh of workers.
  register @0 (workers :M.ActorRef(Worker), count :UInt32) -> (accepted :Bool);
  collect @1 (reports :List(Report)) -> (mean :Float64, total :UInt64);
}
