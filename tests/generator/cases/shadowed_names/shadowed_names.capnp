@0xa1c3e5f7091b2d73;
# Schema names that are also names the generated module uses itself: structs named like the
# typing helpers it imports (Sequence, Iterator, Generic, ...), a generic parameter named like a
# struct, fields named like its imports (torch, enum), a constant that becomes TYPE_CHECKING, a
# nested struct with the name of a top-level one, endpoints named like attributes of the mesh
# or actor bases (logger, stop), a field named like a struct method (fromAny), a group and a
# constant whose Python names are taken by a nested enum and a struct.
using M = import "/monarch/actor.capnp";

struct Item { id @0 :UInt32; }
struct Sequence { items @0 :List(Item); }
struct Iterator { pos @0 :UInt32; }
struct Generic { g @0 :Text; }
struct Literal { l @0 :Text; }
struct Awaitable { a @0 :Text; }
struct ClassVar { c @0 :Text; const local :UInt32 = 2; }
struct TypeVar { t @0 :Text; }
struct AsyncIterator { n @0 :UInt32; }

struct Box(Item) {
  value @0 :Item;
}

struct Tensors {
  torch @0 :Data $M.tensor;
  enum @1 :Kind = b;
  enum Kind { a @0; b @1; }
  fromAny @2 :Text;
  kind :group {
    # Its class would be Kind, the enum's name: it becomes Kind_.
    level @3 :UInt8;
  }
}

struct Order {
  # A nested Item: inside Order, `Item` names this one; the top-level one is `.Item`.
  struct Item { sku @0 :Text; }
  struct Sequence { n @0 :UInt32; }
  lines @0 :List(Item);
  bought @1 :List(.Item);
  boxed @2 :Box(.Item);
  union {
    nothing @3 :Void;
    status :group {
      seq @4 :Sequence;
      items @5 :List(.Item);
    }
  }
}

const typeChecking :Bool = true;
struct IO { n @0 :UInt8; }
const io :UInt8 = 1;  # IO_, beside the struct IO

interface Shelf $M.actor {
  logger @0 (it :Iterator) -> (g :Generic);
  stop @1 ();
  order @2 (order :Order) -> Order;
  boxed @3 (box :Box(Sequence)) -> Box(Item);
  stream @4 (n :UInt32) -> (step :AsyncIterator) $M.stream;
}
