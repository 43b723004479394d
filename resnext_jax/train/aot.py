"""The pod job checked before the pod: the trainer's real train and eval steps compiled
ahead of time for a TPU slice, on any host (``python -m resnext_jax.main --mode=compile``).

libtpu (``pip install "resnext_jax[tpu]"``) compiles for a named TPU topology without a TPU:
:func:`topology_devices` gives the slice's abstract chips, the trainer's builders
(:mod:`resnext_jax.train.builders`) make the same jitted steps over a mesh of them, and
``.lower(abstract state and batch).compile()`` runs the TPU compiler. Nothing is
initialised and no data is read. The executable's memory analysis is each chip's HBM need;
its HLO shows what each chip computes and moves (:mod:`resnext_jax.hlo`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from resnext_jax import hlo
from resnext_jax.errors import UsageError
from resnext_jax.ops import resolve_dtype
from resnext_jax.train.builders import (
    abstract_batch,
    build_steps,
    check_run_config,
    make_mesh,
    model_from_config,
)
from resnext_jax.zoo import get_entry

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice as ``get_topology_desc`` takes it, and each chip's HBM."""

    topology_name: str  # e.g. "v4:2x2x4"
    chip_config_name: str  # "megacore" (v4, v5p: one device a chip) or "default"
    chips_per_host_bounds: tuple[int, int, int]
    chips: int
    hbm_gib: float


def _slices(generation: str, prefix: str, chip_config: str, hbm_gib: float,
            shapes: dict[int, str], per_chip: int) -> dict[str, Topology]:
    """``{f"{generation}-{n}": Topology}``; ``n`` counts TensorCores, ``per_chip`` to a chip."""
    return {f"{generation}-{n}": Topology(f"{prefix}:{shape}", chip_config, (2, 2, 1),
                                          n // per_chip, hbm_gib)
            for n, shape in shapes.items()}


# Shapes, chip configs and host bounds as MaxText's accelerator_to_spec_map.py and xpk's
# system_characteristics.py give them (AI-Hypercomputer/maxtext, AI-Hypercomputer/xpk);
# HBM per chip from Google Cloud's TPU pages (v4 32 GiB, v5e 16 GiB, v5p 95 GiB,
# v6e 32 GiB). The names are the accelerator types users type; ``v5litepod-N`` is ``v5e-N``.
TOPOLOGIES: dict[str, Topology] = {
    **_slices("v4", "v4", "megacore", 32, {
        8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8",
        512: "4x8x8", 1024: "8x8x8", 2048: "8x8x16", 4096: "8x16x16"}, per_chip=2),
    **_slices("v5p", "v5", "megacore", 95, {
        8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4", 256: "4x4x8",
        512: "4x8x8", 1024: "8x8x8", 2048: "8x8x16", 4096: "8x16x16"}, per_chip=2),
    **_slices("v5e", "v5e", "default", 16, {
        4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
        per_chip=1),
    **_slices("v6e", "v6e", "default", 32, {
        4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
        per_chip=1),
}


def get_topology(name: str) -> Topology:
    """The table's entry of ``name`` (``v5litepod-N`` is ``v5e-N``); unknown names are a
    one-line error that lists the known ones."""
    key = re.sub(r"^v5litepod-", "v5e-", name.strip().lower())
    if key not in TOPOLOGIES:
        raise UsageError(f"unknown TPU topology {name!r}; known: {', '.join(TOPOLOGIES)} "
                         "(v5litepod-N is v5e-N)")
    return TOPOLOGIES[key]


@functools.cache
def topology_devices(name: str, num_slices: int = 1) -> tuple[jax.Device, ...]:
    """The abstract chips of ``num_slices`` slices of ``name``, from libtpu, on any host
    (described once a process: the command and each ``--max_batch`` trial share them)."""
    from jax.experimental import topologies

    t = get_topology(name)
    if num_slices < 1:
        raise UsageError(f"--num_slices={num_slices}: give 1 or more")
    if importlib.util.find_spec("libtpu") is None:
        raise UsageError("compiling for a TPU needs libtpu: pip install 'resnext_jax[tpu]' "
                         "(it matches the installed jax)")
    # Compiling opens no chip, so several compiles may share the host: libtpu's lockfile,
    # which keeps two processes off one TPU, does not apply.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=t.topology_name, chip_config_name=t.chip_config_name,
            chips_per_host_bounds=t.chips_per_host_bounds, num_slices=num_slices)
    except Exception as err:  # noqa: BLE001 - libtpu's own errors, as one line
        raise UsageError(f"libtpu cannot describe TPU topology {name}: "
                         f"{_first_line(err)}") from None
    return tuple(desc.devices)


@dataclasses.dataclass(frozen=True)
class ProgramReport:
    """One compiled step, per chip and call."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written over donated arguments (the train state)
    temp_bytes: int
    code_bytes: int
    flops: float
    collectives: dict[str, tuple[int, int]]  # kind -> (count, bytes)
    compile_seconds: float

    @property
    def hbm_bytes(self) -> int:
        """What the chip holds at the peak: arguments, temporaries, outputs not written
        over donated arguments, and the program."""
        return (self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes
                + self.code_bytes)


@dataclasses.dataclass(frozen=True)
class Report:
    topology: str
    num_slices: int
    chips: int
    hbm_gib: float  # per chip
    model: str
    dtype: str
    num_classes: int
    batch_per_chip: int
    train: ProgramReport
    eval: ProgramReport

    @property
    def fits(self) -> bool:
        return max(self.train.hbm_bytes, self.eval.hbm_bytes) <= self.hbm_gib * GIB


class DoesNotFitError(UsageError):
    """The step needs more HBM than a chip has, or the TPU compiler refused it."""


def compile_for(config: ConfigDict, topology: str, num_slices: int = 1) -> Report:
    """Compile ``config``'s train and eval steps for ``num_slices`` slices of ``topology``.

    The classifier has ``config.model.num_classes`` classes, else the zoo model's (no data
    is opened to count them). The schedule takes one step an epoch: its constants do not
    change the program's size.
    """
    devices = topology_devices(topology, num_slices)
    mesh = make_mesh(devices)
    check_run_config(config, mesh.size)
    num_classes = config.model.num_classes or get_entry(config.model.name).kwargs.get(
        "num_classes", 1000)
    model, _ = model_from_config(config, num_classes, weights=False)
    total = config.num_train_steps if config.num_train_steps > 0 else max(
        1, math.ceil(config.num_epochs))
    steps = build_steps(config, model, mesh, num_classes=num_classes, steps_per_epoch=1,
                        total_steps=total)
    t = get_topology(topology)
    reports = {}
    for name, step in (("train", steps.train_step), ("eval", steps.eval_step)):
        batch = abstract_batch(config, steps, train=name == "train")
        start = time.perf_counter()
        try:
            with jax.set_mesh(mesh):
                compiled = step.lower(steps.abstract_state, batch).compile()
        except Exception as err:  # noqa: BLE001 - the compiler's refusal, as one line
            raise _refusal(err, config, name, len(devices), t.hbm_gib) from None
        reports[name] = _program_report(compiled, time.perf_counter() - start)
    dtype = jnp.dtype(resolve_dtype(model.dtype, devices[0].platform))
    return Report(topology=topology, num_slices=num_slices, chips=len(devices),
                  hbm_gib=t.hbm_gib, model=config.model.name, dtype=str(dtype),
                  num_classes=num_classes, batch_per_chip=config.batch_size // len(devices),
                  train=reports["train"], eval=reports["eval"])


def _program_report(compiled: Any, seconds: float) -> ProgramReport:
    memory = compiled.memory_analysis()
    moved = hlo.per_device(compiled)
    return ProgramReport(
        argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes, flops=moved["flops"],
        collectives={k: (int(moved[f"{k}_count"]), int(moved[f"{k}_bytes"]))
                     for k in hlo.COLLECTIVES if moved[f"{k}_count"]},
        compile_seconds=seconds)


_KNOBS = ("lower it with a smaller per-chip batch (--config.batch_size), "
          "--config.grad_accum_steps=K (K micro-batches a step) or --config.model.remat=True")


def _refusal(err: Exception, config: ConfigDict, step: str, chips: int,
             hbm_gib: float) -> UsageError:
    """The TPU compiler's refusal as one line: per-chip need against capacity and the knobs."""
    text = str(err)
    # e.g. "the total memory required for HLO temporaries (26.81G) exceeds available HBM
    # (15.75G)": the compiler's own figures when it has them.
    found = re.search(r"required for ([\w ]+?) \(([\d.]+)([KMGT])\) exceeds available HBM "
                      r"\(([\d.]+)([KMGT])\)", text)
    per_chip = config.batch_size // chips
    if found:
        what, need, unit, usable, usable_unit = found.groups()
        return DoesNotFitError(
            f"the {step} step does not fit: {per_chip} images a chip need {need} {unit}iB of "
            f"HBM for {what} against {usable} {usable_unit}iB usable of {hbm_gib:g} GiB a "
            f"chip; {_KNOBS}")
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return DoesNotFitError(
            f"the {step} step does not fit: {per_chip} images a chip need more HBM than the "
            f"{hbm_gib:g} GiB a chip has ({_first_line(err)[:200]}); {_KNOBS}")
    return UsageError(f"the TPU compiler refused the {step} step: {_first_line(err)[:300]}")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_fits(report: Report) -> None:
    """A :class:`DoesNotFitError` naming need, capacity and knobs when a step needs more HBM
    than a chip has (the compiler may accept a program it cannot run)."""
    worst = max((report.train, "train"), (report.eval, "eval"), key=lambda p: p[0].hbm_bytes)
    if not report.fits:
        raise DoesNotFitError(
            f"the {worst[1]} step does not fit: {report.batch_per_chip} images a chip need "
            f"{worst[0].hbm_bytes / GIB:.2f} GiB of HBM against {report.hbm_gib:g} GiB a "
            f"chip; {_KNOBS}")


def max_batch_per_chip(config: ConfigDict, topology: str, num_slices: int = 1,
                       limit: int = 4096) -> tuple[int, Report | None]:
    """The largest per-chip batch (a power of two times the gradient accumulation, up to
    ``limit``) whose steps fit, found by compiling; ``(0, None)`` when none does."""
    chips = get_topology(topology).chips * num_slices
    unit = config.grad_accum_steps
    best: tuple[int, Report | None] = (0, None)
    per_chip = unit
    while per_chip <= limit:
        trial = ConfigDict(config.to_dict())
        trial.batch_size = trial.eval_batch_size = per_chip * chips
        try:
            report = compile_for(trial, topology, num_slices)
            check_fits(report)
        except DoesNotFitError:
            break
        best, per_chip = (per_chip, report), per_chip * 2
    return best


def format_report(r: Report) -> str:
    """The per-chip table the command prints."""
    def gib(n: float) -> str:
        return f"{n / GIB:.2f} GiB"

    slices = f" x {r.num_slices} slices" if r.num_slices > 1 else ""
    lines = [f"{r.model} ({r.dtype}, {r.num_classes} classes) on {r.topology}{slices}: "
             f"{r.chips} chips, {r.batch_per_chip} images a chip, {r.hbm_gib:g} GiB HBM a chip",
             f"{'per chip':<22}{'train step':>14}{'eval step':>14}"]
    rows = [("arguments", gib(r.train.argument_bytes), gib(r.eval.argument_bytes)),
            ("temporaries", gib(r.train.temp_bytes), gib(r.eval.temp_bytes)),
            ("outputs (not donated)", gib(r.train.output_bytes - r.train.alias_bytes),
             gib(r.eval.output_bytes - r.eval.alias_bytes)),
            ("HBM needed", gib(r.train.hbm_bytes), gib(r.eval.hbm_bytes)),
            ("TFLOPs", f"{r.train.flops / 1e12:.3f}", f"{r.eval.flops / 1e12:.3f}")]
    for kind in hlo.COLLECTIVES:
        t, e = r.train.collectives.get(kind), r.eval.collectives.get(kind)
        if t or e:
            rows.append((kind, _moved(t), _moved(e)))
    rows.append(("compile", f"{r.train.compile_seconds:.0f} s", f"{r.eval.compile_seconds:.0f} s"))
    lines += [f"{a:<22}{b:>14}{c:>14}" for a, b, c in rows]
    lines.append("fits" if r.fits else "does NOT fit")
    return "\n".join(lines)


def _moved(entry: tuple[int, int] | None) -> str:
    if not entry:
        return "-"
    count, size = entry
    return f"{count} x, {size / 2**20:.0f} MiB"
