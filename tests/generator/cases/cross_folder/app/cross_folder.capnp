@0xa1c3e5f7091b2d52;
using M = import "/monarch/actor.capnp";
using Units = import "../common/units.capnp";
using Ids = import "/shared/ids.capnp";
struct Job {
  id @0 :Ids.Id;
  budget @1 :Units.Quantity;
  unit @2 :Units.Unit = bytes;
}
interface Scheduler $M.actor {
  submit @0 (job :Job) -> (id :Ids.Id);
}
