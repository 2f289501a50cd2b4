@0xa1c3e5f7091b2d42;
using M = import "/monarch/actor.capnp";

struct Page(T) {
  items @0 :T;
  next @1 :Text;
  total @2 :UInt32;
}
struct Box(T) { value @0 :T; }
struct Item { id @0 :UInt32; name @1 :Text; }
struct Items { list @0 :List(Item); }

struct Query { text @0 :Text; limit @1 :UInt32 = 10; }

struct Catalog {
  first @0 :Page(Items);
  pages @1 :List(Page(Items));
  boxed @2 :Box(Page(Items));
  names @3 :Page(Text);
}

interface Shop $M.actor {
  listing @0 (page :UInt32) -> Page(Items);
  boxed @1 (box :Box(Item)) -> Box(Item);
  pages @2 (pages :List(Page(Items))) -> (pages :List(Page(Items)));
  nested @3 () -> Box(Page(Items));
  texts @4 () -> Page(Text);
  catalog @5 (c :Catalog) -> Catalog;
  find @6 Query -> Page(Items);
}
