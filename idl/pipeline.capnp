@0xfea1a77f93c025b6;
# A three-stage pipeline (examples/pipeline.py): three implementations of one `Stage` interface
# on three procs, each forwarding its output to the next stage, actor to actor.

using M = import "/monarch/actor.capnp";

struct Item {
  # One unit of work flowing through the pipeline.
  seq @0 :UInt32;
  # Position in the input, to check order at the end.
  values @1 :List(Float64);
  trace @2 :List(Text);
  # The stages that handled the item, in order.
}

interface Stage $M.actor {
  # One pipeline stage.
  connect @0 (next :M.ActorRef(Stage)) -> ();
  # Forward every processed item to `next`; a stage without one keeps its output.
  push @1 (item :Item) -> ();
  # Process `item` (sent with `broadcast`: fire and forget, in order per sender).
  flush @2 () -> (count :UInt32);
  # Wait until every item pushed before is through the rest of the pipeline; returns how many
  # items this stage processed.
  drain @3 () -> (items :List(Item));
  # Take the kept output (last stage).
}
