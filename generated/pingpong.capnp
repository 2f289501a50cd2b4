@0xef22bc7309b03d36;
# Ping-pong between two actor meshes (examples/ping_pong.py): every player of one mesh plays the
# player of the same rank in the other mesh, actor to actor.

using M = import "/monarch/actor.capnp";

struct Ball {
  # What players hit back and forth.
  hits @0 :UInt32;
  # How many times the ball was hit so far.
  lastPlayer @1 :Text;
  # The actor id of the player who hit it last.
}

interface Player $M.actor {
  # One player; it knows its opponents as a mesh and plays the one of its own rank.
  setOpponents @0 (opponents :M.ActorRef(Player)) -> ();
  # Remember `opponents` (a mesh shaped like this player's) for `serve`.
  serve @1 (rounds :UInt32) -> (ball :Ball);
  # Hit the ball to the opponent `rounds` times; returns the ball after the last return.
  hit @2 (ball :Ball) -> (ball :Ball);
  # Return the ball: one more hit, signed by this player.
}
