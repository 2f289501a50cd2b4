@0xa1c3e5f7091b2d70;
# A schema written from the Cap'n Proto language reference: generics as results, enumerants named
# like Python builtins, a union of groups, and two actors that reference each other.
using M = import "/monarch/actor.capnp";

enum Stage {
  train @0;
  eval @1;
  input @2;
}

struct Page(T) {
  items @0 :T;
  cursor @1 :Text;
}

struct Jobs {
  list @0 :List(Job);
}

struct Job {
  id @0 :UInt64;
  stage @1 :Stage = eval;
  union {
    idle @2 :Void;
    running :group {
      since @3 :Float64;
      worker @4 :M.ActorRef(Worker);
    }
    failed :group {
      reason @5 :Text;
    }
  }
}

interface Scheduler $M.actor {
  register @0 (worker :M.ActorRef(Worker)) -> (count :UInt32);
  jobs @1 (stage :Stage = eval) -> Page(Jobs);
}

interface Worker $M.actor {
  run @0 (job :Job, scheduler :M.ActorRef(Scheduler)) -> (job :Job);
}
