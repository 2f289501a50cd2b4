@0xce055de1627ecd74;
# Enumerants that cannot be IntEnum members as spelled: Enum refuses `mro`; mypy rejects
# members hiding int's attributes (real, imag, numerator, denominator, conjugate) and Enum's
# own (name, value). Each becomes `name_`, in members, defaults, lists and constants alike.
using M = import "/monarch/actor.capnp";

enum Part {
  real @0;
  imag @1;
  mro @2;
  numerator @3;
  denominator @4;
  conjugate @5;
  name @6;
  value @7;
  plain @8;
}

struct Sample {
  part @0 :Part = imag;
  parts @1 :List(Part) = [mro, real, conjugate];
  detail :group {
    inner @2 :Part = denominator;
  }
  union {
    none @3 :Void;
    picked @4 :Part = numerator;
  }
  kind @5 :Kind = mro;
  enum Kind { real @0; mro @1; }
}

const defaultPart :Part = mro;
const allParts :List(Part) = [real, imag, mro, numerator, denominator, conjugate, name, value, plain];
const sample :Sample = (part = real, parts = [conjugate], kind = real);

interface Complex $M.actor {
  pick @0 (part :Part = conjugate, sample :Sample) -> (part :Part);
  # The part given (its default when omitted), or the sample's when it is `real`.
}
