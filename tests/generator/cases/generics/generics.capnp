@0x87164aaf4c118d09;

struct Pair(A, B) {
  # Two values of any pointer types.
  first @0 :A;
  second @1 :B;
}

struct Item { id @0 :UInt32; }

struct Holder {
  items @0 :Pair(Item, Text);
  named @1 :Pair(Text, Data);
}
