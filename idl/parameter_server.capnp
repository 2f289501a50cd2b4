@0x906150b912d936b3;
# A parameter server and its workers (examples/parameter_server.py): workers pull the weights,
# compute a gradient on their own shard and push it; the server applies every push at once
# (asynchronous SGD).

using M = import "/monarch/actor.capnp";

struct Versioned {
  # The weights as of one version.
  version @0 :UInt64;
  # How many gradients the server has applied.
  weights @1 :M.Tensor;
  # float32 [features].
}

interface ParameterServer $M.actor {
  # Holds the weights of a linear model.
  pull @0 () -> Versioned;
  # The current weights.
  push @1 (grads :M.Tensor, worker :UInt32) -> (version :UInt64);
  # Apply `grads` (float32 [features]) with the server's learning rate; the new version.
}

interface Worker $M.actor {
  # Owns one shard of a regression data set.
  work @0 (server :M.ActorRef(ParameterServer), steps :UInt32) -> (loss :Float64);
  # Pull, compute the gradient of the mean squared error on the shard, push; `steps` times.
  # Returns the shard's loss with the weights pulled last.
}
