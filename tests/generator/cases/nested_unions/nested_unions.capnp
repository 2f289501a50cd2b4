@0xa1c3e5f7091b2d43;
struct Event {
  id @0 :UInt64;
  union {
    none @1 :Void;
    move :group {
      dx @2 :Int32;
      dy @3 :Int32;
    }
    key :union {
      code @4 :UInt32;
      text @5 :Text;
      chord :group {
        modifiers @6 :UInt8;
        code @7 :UInt32;
      }
    }
    batch @8 :List(Event);
  }
  meta :group {
    source @9 :Text;
    kind :union {
      local @10 :Void;
      remote :group {
        host @11 :Text;
        port @12 :UInt16;
      }
    }
  }
}
