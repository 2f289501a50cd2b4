@0xa1c3e5f7091b2d50;
# Shared units.
enum Unit { bytes @0; seconds @1; }
struct Quantity { value @0 :Float64; unit @1 :Unit = seconds; }
