@0xa1c3e5f7091b2d46;
enum Mode { fast @0; safe @1; }
struct Limits {
  maxItems @0 :UInt32;
  name @1 :Text;
  mode @2 :Mode;
  tags @3 :List(Text);
  inner @4 :Inner;
  struct Inner { ratio @0 :Float64; }
}
const defaults :Limits = (maxItems = 10, name = "std", mode = safe, tags = ["a", "b"], inner = (ratio = 0.25));
const presets :List(Limits) = [(maxItems = 1), (maxItems = 2, mode = fast)];
struct Holder {
  limits @0 :Limits = (maxItems = 3);
  const local :Limits = (name = "nested");
}
