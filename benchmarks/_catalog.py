"""What the report shows: headline rows, their raw baselines and the targets we must hit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``ours/monarch <= 0.35`` (kind ``ratio``) or ``ours >= 1800`` (kind ``abs``)."""

    kind: str  # "ratio" (ours / torchmonarch) or "abs" (ours, in the metric's unit)
    op: str  # "<=" or ">="
    value: float

    def text(self) -> str:
        return f"{self.op} {self.value:g}x" if self.kind == "ratio" else f"{self.op} {self.value:g}"

    def met(self, ours: float | None, monarch: float | None) -> bool | None:
        if ours is None:
            return None
        if self.kind == "ratio":
            if not monarch:
                return None
            x = ours / monarch
        else:
            x = ours
        return x <= self.value if self.op == "<=" else x >= self.value


@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    raw: str | None = None
    target: Target | None = None
    unit: str | None = None


DEFAULT_LOOP = "uvloop"


def raw_name(base: str, loop: str) -> str:
    return f"{base}[{loop}]"


def headline_rows(loop: str) -> list[Row]:
    """The table's actor rows; ``loop`` is the event loop of the raw UDS baselines."""
    return [
        Row(
            "call_one_rtt_us",
            "call_one round trip",
            raw_name("uds_echo_rtt_us", loop),
            Target("ratio", "<=", 0.35),
        ),
        Row(
            "calls_10k_per_s",
            "10k call_one submitted, then awaited",
            raw_name("uds_pipelined_10k_per_s", loop),
            Target("ratio", ">=", 3.0),
        ),
        Row(
            "broadcast_10k_per_s",
            "10k broadcasts to 1 actor + barrier",
            raw_name("uds_oneway_10k_barrier_per_s", loop),
            Target("ratio", ">=", 3.0),
        ),
        Row(
            "call_4procs_us",
            "call() to 4 procs",
            raw_name("uds_fanout4_us", loop),
            Target("ratio", "<=", 0.35),
        ),
        Row(
            "tensor_16mib_MBps",
            "16 MiB tensor round trip (16 MiB / RTT)",
            raw_name("uds_echo_16mib_MBps", loop),
            Target("abs", ">=", 1800.0),
        ),
        Row("tensor_16mib_rtt_ms", "16 MiB tensor round trip time"),
        Row(
            "spawn_4procs_s",
            "4 procs up + 1 answer each (first)",
            "spawn_4_pythons_s",
            Target("ratio", "<=", 0.4),
        ),
        Row("spawn_4procs_again_s", "4 procs up + 1 answer each (again)", "spawn_4_pythons_s"),
        Row("import_actor_api_s", "import monarch.actor"),
    ]


RAW_ROWS = [
    ("memcpy_64mib_GBps", "memcpy 64 MiB (numpy)"),
    ("memcpy_16mib_GBps", "memcpy 16 MiB (numpy)"),
    ("process_vm_readv_64mib_GBps", "process_vm_readv 64 MiB"),
    ("spawn_4_pythons_s", "4 bare pythons start + answer"),
]

RAW_UDS_ROWS = [
    ("uds_echo_rtt_us", "UDS echo round trip"),
    ("uds_pipelined_10k_per_s", "UDS 10k pipelined echoes"),
    ("uds_oneway_10k_barrier_per_s", "UDS 10k one-way + barrier"),
    ("uds_fanout4_us", "UDS echo to 4 servers"),
    ("uds_echo_16mib_MBps", "UDS 16 MiB echo (BufferedProtocol)"),
]
