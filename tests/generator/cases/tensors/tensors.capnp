@0xc3d2e1f0a9b8c7d6;
using M = import "/monarch/actor.capnp";

struct Sample {
  # Tensors and raw data.
  features @0 :M.Tensor;
  raw @1 :Data $M.tensor;
  blob @2 :Data;
  history @3 :List(M.Tensor);
}
