@0xc3a1f2e4d5b60718;
# The schema of benchmarks/generator_bench.py's IDL-path round trips: a small struct and a
# struct with a 16 MiB tensor field, echoed by an actor (the plain-API twin is in _idl_actors).
using M = import "/monarch/actor.capnp";

struct Point {
  x @0 :Float64;
  y @1 :Float64;
  step @2 :UInt32;
  label @3 :Text;
}

struct Frame {
  step @0 :UInt64;
  data @1 :M.Tensor;
}

interface Echo $M.actor {
  point @0 (p :Point) -> (p :Point);
  frame @1 (f :Frame) -> (f :Frame);
}
