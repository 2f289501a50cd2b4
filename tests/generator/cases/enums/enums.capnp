@0xe61cece067732be7;

enum Level {
  # Log levels.
  debug @0;
  info @1;   # The default.
  warningLevel @2;
  name @3;
}

struct Record {
  level @0 :Level = info;
  levels @1 :List(Level);
  enum Kind { plain @0; fancy @1; }
  kind @2 :Kind;
}
