@0x8fb13cb0891a876f;
# Primitive fields, defaults, constants, nested types and renamed names.

struct Everything {
  # One field of every primitive type.
  flag @0 :Bool = true;
  i8 @1 :Int8 = -8;
  i16 @2 :Int16;
  i32 @3 :Int32 = 32;
  i64 @4 :Int64 = -64;
  u8 @5 :UInt8;
  u16 @6 :UInt16;
  u32 @7 :UInt32;
  u64 @8 :UInt64 = 18446744073709551615;
  f32 @9 :Float32 = 0.1;
  f64 @10 :Float64 = inf;
  name @11 :Text = "it's \"quoted\"";
  blob @12 :Data = 0x"deadbeef";
  from @13 :Text;     # A Python keyword: becomes from_.
  camelCaseName @14 :Int32;  # Becomes camel_case_name.
  type @15 :Int32;    # A builtin: becomes type_.
  inner @16 :Inner;
  nothing @17 :Void;

  struct Inner {
    # A nested struct.
    value @0 :Int64;
    struct Deeper { ok @0 :Bool; }
  }
}

struct Empty {}

const answer :Int32 = 42;
# The answer.
const greeting :Text = "hello";
const ratio :Float64 = 0.5;
const primes :List(UInt32) = [2, 3, 5, 7];
const magic :Data = 0x"0102";
