"""The tools users live in: the client's admin endpoint, code sync, the distributed debugger,
environment inspection, ``monarch top`` and the dashboard.

Layer 5 (STYLE.md): imports the runtime, never imported by it. The ``monarch`` CLI
(``monarch.cli``) reaches these modules lazily, so ``monarch --help`` stays fast.
"""
