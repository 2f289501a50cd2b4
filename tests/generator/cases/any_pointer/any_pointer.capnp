@0xa1c3e5f7091b2d47;
struct Item { id @0 :UInt32; }
struct Envelope {
  kind @0 :Text;
  payload @1 :AnyPointer;
  body @2 :AnyStruct;
}
