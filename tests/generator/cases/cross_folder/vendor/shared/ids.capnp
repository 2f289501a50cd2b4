@0xa1c3e5f7091b2d51;
struct Id { hi @0 :UInt64; lo @1 :UInt64; }
