"""Ping-pong between two actor meshes, through the stubs generated from ``idl/pingpong.capnp``.

Two meshes of two players each, on two separate proc meshes. Every "ping" player is told about
the whole "pong" mesh and plays the pong player of its own rank (``slice(**rank)``), actor to
actor; the client only starts the rallies and checks the balls that come back.

Run: ``python examples/ping_pong.py [--rounds 10]``.
"""

from __future__ import annotations

import argparse
import sys

from monarch.actor import context, this_host
from monarch.generated.pingpong import Ball, Player, PlayerMesh


class Table(Player):
    """A player that returns every ball and can serve rallies against its opponent."""

    def __init__(self) -> None:
        self.opponent: PlayerMesh | None = None

    def set_opponents(self, opponents: PlayerMesh) -> None:
        self.opponent = opponents.slice(**context().actor_instance.rank)

    def serve(self, rounds: int) -> Ball:
        if self.opponent is None:
            raise RuntimeError("serve() before set_opponents()")
        ball = Ball(hits=0, last_player=context().actor_instance.actor_id)
        for _ in range(rounds):
            ball = self.opponent.hit.call_one(self.hit(ball)).get()
        return ball

    def hit(self, ball: Ball) -> Ball:
        return Ball(hits=ball.hits + 1, last_player=context().actor_instance.actor_id)


def main() -> int:
    parser = argparse.ArgumentParser(description="Ping-pong between two meshes (generated stubs).")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    ping_procs = this_host().spawn_procs(per_host={"gpus": 2})
    pong_procs = this_host().spawn_procs(per_host={"gpus": 2})
    try:
        pings = ping_procs.spawn("ping", Table)
        pongs = pong_procs.spawn("pong", Table)
        pings.set_opponents.broadcast(pongs)
        balls = pings.serve.call(args.rounds).get(timeout=60)
        for point, ball in balls.items():
            print(f"ping {dict(point)}: {ball.hits} hits, last by {ball.last_player}")
        ok = all(
            b.hits == 2 * args.rounds and b.last_player.startswith("pong") for b in balls.values()
        )
    finally:
        ping_procs.stop().get(30)
        pong_procs.stop().get(30)
    print(f"ping-pong: {len(balls)} pairs x {args.rounds} rounds {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
