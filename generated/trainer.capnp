@0xa38799f88f4bca1b;
# Data-parallel training (examples/train_digits.py): rank-matched data loaders serve minibatches
# of their shard to trainers; gradients are averaged either by the client (call + reduce) or by
# the trainers themselves through a gradient reducer actor (actor to actor).

using M = import "/monarch/actor.capnp";

struct Batch {
  # One minibatch of one shard.
  step @0 :UInt32;
  inputs @1 :M.Tensor;
  # float32 [batch, features], values in [0, 1].
  labels @2 :M.Tensor;
  # int64 [batch], class indices.
}

struct Progress {
  # One training step of one trainer, as `fit` reports it.
  step @0 :UInt32;
  loss @1 :Float32;
  # Mean cross-entropy of this trainer's minibatch, before the update.
}

interface DataLoader $M.actor {
  # Holds one shard of the training set (the shard of its own rank) and serves minibatches.
  batch @0 (step :UInt32) -> Batch;
  # A minibatch drawn (with replacement, seeded per rank) from the shard.
  shardSize @1 () -> (examples :UInt32);
  # Number of examples in the shard.
}

interface GradientReducer $M.actor {
  # Averages the gradients of a fixed number of trainers, step by step (an all-reduce through
  # one actor). Every trainer gets the mean once all have contributed to that step.
  allReduce @0 (step :UInt32, grads :M.Tensor) -> (mean :M.Tensor) $M.explicitResponsePort;
  # Contribute `grads` (float32 [parameters]) for `step`; answered with the mean when complete.
}

interface Trainer $M.actor {
  # One data-parallel replica of the model.
  connect @0 (loaders :M.ActorRef(DataLoader)) -> ();
  # Use the data loader of the same rank in `loaders` (a mesh shaped like the trainers').
  train @1 (step :UInt32) -> (loss :Float32);
  # Forward and backward on the next minibatch; keeps the gradients; returns the loss.
  gradients @2 () -> (grads :M.Tensor);
  # The gradients of the last `train`, flattened: float32 [parameters].
  applyGradients @3 (grads :M.Tensor) -> ();
  # Take one optimizer step with `grads` (float32 [parameters]) as the gradients.
  weights @4 () -> (weights :M.Tensor);
  # The parameters, flattened: float32 [parameters].
  setWeights @5 (weights :M.Tensor) -> ();
  # Overwrite the parameters with `weights` (float32 [parameters]).
  evaluate @6 () -> (correct :UInt32, total :UInt32);
  # Accuracy counts on this trainer's shard of the held-out set.
  fit @7 (steps :UInt32, reducer :M.ActorRef(GradientReducer)) -> Progress $M.stream;
  # Train `steps` steps, averaging gradients with the other trainers through `reducer`;
  # yields once per step.
}
