@0xa1c3e5f7091b2d44;
enum Color { red @0; green @1; }
struct Cell { v @0 :Float64; }
struct Grid {
  ints @0 :List(List(Int32));
  texts @1 :List(List(Text));
  cells @2 :List(List(Cell));
  colors @3 :List(List(Color));
  cube @4 :List(List(List(Float64)));
  blobs @5 :List(List(Data));
  bools @6 :List(List(Bool));
}
