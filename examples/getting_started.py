"""Getting started with the actor API: Monarch's getting-started tour, on our runtime.

Walks through the core ideas in order, printing what each step returns:

1. an actor class with endpoints, spawned in this very process (``this_proc().spawn``) and
   called with ``call_one``;
2. a mesh of procs (``this_host().spawn_procs``) with one actor per proc; ``broadcast`` to all,
   ``slice`` to some, ``call`` to gather a ``ValueMesh``;
3. ``context().message_rank``: where an actor sits in the (sliced) mesh a message went to;
4. actor references: a data-loader mesh handed to trainers, each picking its own rank's loader;
5. errors: an endpoint that raises gives the caller an ``ActorError``; the actor lives on;
6. ports and channels: ``Channel.open()`` and ``Port.send`` from actors to the client.

Run: ``python examples/getting_started.py``.
"""

from __future__ import annotations

import sys
from typing import Any

from monarch.actor import (
    Actor,
    ActorError,
    Channel,
    Future,
    Port,
    ProcMesh,
    ValueMesh,
    context,
    endpoint,
    this_host,
    this_proc,
)


# 1. An actor is a class whose endpoints can be called from other processes.
class Counter(Actor):
    def __init__(self, initial_value: int) -> None:
        self.value = initial_value

    @endpoint
    def increment(self) -> None:
        self.value += 1

    @endpoint
    def get_value(self) -> int:
        return self.value


# 3. Inside an endpoint, context() says which actor runs and which message it handles.
class Trainer(Actor):
    @endpoint
    def step(self) -> str:
        return f"trainer at {dict(context().message_rank)} takes a step"


# 4. Actors (and meshes of them) are values: they can be passed to other actors.
class DataLoader(Actor):
    def __init__(self) -> None:
        self.served = 0

    @endpoint
    def example(self) -> str:
        self.served += 1
        return f"<sample {self.served} from loader {context().actor_instance.rank.rank}>"


class DataTrainer(Actor):
    def __init__(self, loaders: Any) -> None:
        # pick the loader with the same coordinates as this trainer
        self.loader = loaders.slice(**context().actor_instance.rank)

    @endpoint
    def step(self, lr: float) -> str:
        sample = self.loader.example.call_one().get()
        return f"step with {sample}, lr={lr}"


# 5. A failing endpoint.
class Errorful(Actor):
    @endpoint
    def say_hello(self) -> str:
        raise RuntimeError("I don't want to")

    @endpoint
    def still_there(self) -> bool:
        return True


# 6. Actors that report through a port given to them.
class Reporter(Actor):
    @endpoint
    def report(self, port: Port[str]) -> None:
        port.send(f"hello from reporter {context().actor_instance.rank.rank}")


def main() -> int:
    print("-- 1. one actor in this process")
    counter = this_proc().spawn("counter", Counter, initial_value=0)
    fut: Future[int] = counter.get_value.call_one()
    print(f"counter value: {fut.get()}")
    counter.increment.broadcast()
    print(f"after increment: {counter.get_value.call_one().get()}")

    print("-- 2. a mesh of procs, one counter each")
    procs: ProcMesh = this_host().spawn_procs(per_host={"gpus": 4})
    try:
        counters = procs.spawn("counters", Counter, 0)
        counters.increment.broadcast()  # all four
        counters.slice(gpus=slice(0, 2)).increment.broadcast()  # gpus 0 and 1 only
        values: ValueMesh[int] = counters.get_value.call().get()
        print(f"values after broadcast + sliced broadcast: {values}")
        print(f"gpus=3 alone: {counters.slice(gpus=3).get_value.call_one().get()}")

        print("-- 3. message ranks")
        trainers = procs.spawn("trainers", Trainer)
        for line in trainers.step.call().get().values():
            print(line)
        for line in trainers.slice(gpus=slice(2, 4)).step.call().get().values():
            print(f"(sliced) {line}")

        print("-- 4. actor references")
        loaders = procs.spawn("loaders", DataLoader)
        data_trainers = procs.spawn("data_trainers", DataTrainer, loaders)
        for line in data_trainers.step.call(lr=0.1).get().values():
            print(line)

        print("-- 5. errors come back to the caller")
        errorful = procs.slice(gpus=0).spawn("errorful", Errorful)
        try:
            errorful.say_hello.call_one().get()
        except ActorError as exc:
            print(f"it did not say hello: {str(exc).splitlines()[0]}")
        print(f"the actor is still there: {errorful.still_there.call_one().get()}")

        print("-- 6. ports and channels")
        port, receiver = Channel[str].open()
        reporters = procs.spawn("reporters", Reporter)
        reporters.report.broadcast(port)
        messages = sorted(receiver.recv().get(timeout=30) for _ in range(len(reporters)))
        for message in messages:
            print(message)
    finally:
        procs.stop().get(30)
    ok = list(values.values()) == [2, 2, 1, 1] and len(messages) == 4
    print(f"getting started: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
