@0xa1c3e5f7091b2d48;
using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("acme::wire");
struct Sample $Cxx.name("SampleMsg") {
  value @0 :Int32 $Cxx.name("val");
}
