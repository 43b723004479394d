"""What a compiled program computes and moves on each device: collectives, FLOPs, memory.

Equal numbers on 1 and 8 devices do not show that the work is split: XLA may gather the
global batch onto every device and compute it all there (openxla/xla#47945). This reads
the partitioned HLO of ``jax.jit(f).lower(...).compile()`` instead. Collectives inside a
loop (gradient accumulation's ``scan``) count once per iteration when XLA knows the trip
count.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from typing import Any

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) ([\w\-]+)\(", re.M)
_ARRAY = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_CALLEES = re.compile(r"\b(?:body|calls|to_apply|true_computation|false_computation|"
                      r"branch_computations)=\{?(%?[\w.\-]+(?:, %?[\w.\-]+)*)\}?")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of COLLECTIVES
    shape: str  # the result type as HLO prints it
    bytes: int  # result bytes (for all-gather: the gathered array)
    times: int  # executions per call of the program (loop trip counts)


def _shape_bytes(shape: str) -> int:
    return sum(_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in _ARRAY.findall(shape))


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled module's HLO (``compiled.as_text()``), with how often
    one call of the program runs it."""
    bodies = {name: body for name, body in _COMPUTATION.findall(hlo_text)}
    entry = re.search(r"^ENTRY %?([\w.\-]+)", hlo_text, re.M)
    if entry is None:
        raise ValueError("not an HLO module: no ENTRY computation")
    times: Counter[str] = Counter()

    def visit(name: str, count: int) -> None:
        times[name] += count
        for line in bodies.get(name, "").splitlines():
            trip = _TRIP_COUNT.search(line)
            for group in _CALLEES.findall(line):
                for callee in group.split(", "):
                    callee = callee.lstrip("%")
                    inner = count * int(trip.group(1)) if trip and " while(" in line else count
                    if callee in bodies:
                        visit(callee, inner)

    visit(entry.group(1), 1)
    found = []
    for name, count in times.items():
        for shape, op in _INSTRUCTION.findall(bodies[name]):
            kind = op.removesuffix("-start")
            if kind in COLLECTIVES and not op.endswith("-done"):
                found.append(Collective(kind, shape, _shape_bytes(shape), count))
    return found


def per_device(compiled: Any) -> dict[str, float]:
    """FLOPs (XLA's cost analysis), temporary and argument bytes (memory analysis), and the
    count and bytes of each kind of collective, per device and call, of a compiled
    ``jax.jit`` program (``jax.jit(f).lower(...).compile()``)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    out = {"flops": float(cost.get("flops", 0.0)),
           "temp_bytes": float(memory.temp_size_in_bytes),
           "argument_bytes": float(memory.argument_size_in_bytes)}
    found = collectives(compiled.as_text())
    for kind in COLLECTIVES:
        of_kind = [c for c in found if c.kind == kind]
        out[f"{kind}_count"] = float(sum(c.times for c in of_kind))
        out[f"{kind}_bytes"] = float(sum(c.bytes * c.times for c in of_kind))
    return out
