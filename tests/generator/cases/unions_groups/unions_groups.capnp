@0xe5e36f05576d81e0;

struct Shape {
  # An unnamed union and a named group.
  name @0 :Text;
  union {
    circle @1 :Float64;   # Radius.
    square @2 :Float64;
    polygon @3 :List(Point);
  }
  origin :group {
    x @4 :Float32;
    y @5 :Float32;
  }
  style :union {
    plain @6 :Void;
    colored @7 :UInt32;
  }
}

struct Point { x @0 :Float64; y @1 :Float64; }
