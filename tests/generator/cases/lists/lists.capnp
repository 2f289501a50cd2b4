@0xf9d3c1a2b4e5f607;

struct Item {
  id @0 :UInt32;
  payload @1 :Data;
}

struct Bag {
  # Lists of every kind.
  numbers @0 :List(Int64);
  names @1 :List(Text);
  blobs @2 :List(Data);
  items @3 :List(Item);
  matrix @4 :List(List(Float32));
  flags @5 :List(Bool);
  defaults @6 :List(Int32) = [1, 2, 3];
}
