"""An actor whose module takes as long to import as the test says (a training script that imports
torch under load): importing it writes ``$SLOW_IMPORT_DIR/started`` and waits, at most 60 s, for
``$SLOW_IMPORT_DIR/release``. Used by test_spawn_decode.py."""

from __future__ import annotations

import os
import time

from monarch.actor import Actor, endpoint

_DIR = os.environ.get("SLOW_IMPORT_DIR")
if _DIR:
    open(os.path.join(_DIR, "started"), "w").close()
    _deadline = time.monotonic() + 60.0
    while not os.path.exists(os.path.join(_DIR, "release")) and time.monotonic() < _deadline:
        time.sleep(0.01)


class SlowToImport(Actor):
    @endpoint
    def ping(self) -> str:
        return "imported"
