@0xd2f1a6c4b8e93571;
# A parameter server whose weights live in RDMA-registered memory
# (examples/parameter_server_rdma_idl.py): workers pull the weights with one-sided reads of the
# server's handle, compute a gradient on their shard and push it by message; the server averages
# the pushes and steps in place.

using M = import "/monarch/actor.capnp";

struct Weights {
  # Where the server's weights live.
  handle @0 :M.RDMABuffer;
  # float32 [numParams], registered once by the server; read it with `read_into`.
  numParams @1 :UInt32;
  # How many float32 parameters the handle holds.
}

interface ParameterServer $M.actor {
  # Holds a small classifier's parameters in one flat, registered float32 tensor.
  weights @0 () -> Weights;
  # The handle of the registered weights.
  pushGradients @1 (grad :M.Tensor) -> ();
  # Queue a gradient (float32 [numParams]) for the next `apply`.
  apply @2 () -> (averaged :UInt32);
  # Average the queued gradients and take an SGD step in place; how many were averaged.
  accuracy @3 () -> (accuracy :Float64);
  # Accuracy of the current weights on the held-out digits.
}

interface Worker $M.actor {
  # Owns one shard of the digits training set.
  step @0 (server :M.ActorRef(ParameterServer), weights :M.RDMABuffer) -> (loss :Float64);
  # Pull the weights from `weights` (one-sided read), compute the gradient of the
  # cross-entropy on the shard, push it to `server`; the shard's loss before the step.
}
