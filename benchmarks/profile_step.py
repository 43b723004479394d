"""Where a training step's (or, with ``--infer``, a forward pass's) time goes on the CPU: the
figures behind docs/speed.md.

    PYTHONPATH=. python benchmarks/profile_step.py --model resnext50_32x4d --batch 16 [--infer]

Prints the time, page faults, system time and resident memory of each of ``--steps`` steps
(run it with and without GLIBC_TUNABLES=glibc.malloc.hugetlb=1, and with
``--keep-freed-memory``: glibc's malloc told to keep freed blocks, which the project measured
and does not do, docs/speed.md), and the JAX profiler's time per kind of XLA
operation (fusions by their name without the numeric suffix, e.g. ``copy_bitcast_fusion``),
with the share of the step spent in computations that hold the direct grouped form's
multiply-adds (fusions with at least ``--heavy`` multiplies).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import glob
import gzip
import json
import os
import re
import resource
import sys
import tempfile
import time

import jax
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build, make_steps, train_state  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lowering", default="fast")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--heavy", type=int, default=30)
    parser.add_argument("--infer", action="store_true", help="the forward pass (eval mode)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps after a warm-up")
    parser.add_argument("--xla-defaults", action="store_true",
                        help="XLA's default options (a plain jax.jit), not rx.compiler_options()")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="before JAX starts: one malloc arena, no mmap, no trimming")
    args = parser.parse_args()
    if args.keep_freed_memory:  # glibc <malloc.h>: M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD
        libc = ctypes.CDLL(None)
        for option, value in ((-8, 1), (-4, 0), (-1, -1)):
            libc.mallopt(option, value)

    model, variables, images, labels = build(args.model, args.lowering, jax.numpy.float32,
                                             args.batch)
    tx = optax.sgd(0.1, momentum=0.9)
    infer, train = make_steps(model, tx, {} if args.xla_defaults else None)
    if args.infer:
        step, inputs = infer, [variables, images]
        run = lambda: jax.block_until_ready(infer(*inputs))  # noqa: E731
    else:
        batch = {"image": images, "label": labels}
        step, inputs = train, [train_state(model, tx, variables), batch]

        def run():  # the state is donated: carry the new one
            inputs[0] = jax.block_until_ready(train(*inputs))[0]
    run()  # warm-up

    what = "forward" if args.infer else "step"
    print(f"{args.model}, {args.lowering}, batch {args.batch}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
          + (", XLA's default options" if args.xla_defaults else "")
          + (", keeping freed memory" if args.keep_freed_memory else ""))
    for i in range(args.steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run()
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        with open("/proc/self/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
        print(f"{what} {i}: {seconds:.2f} s; {after.ru_minflt - before.ru_minflt:,} page "
              f"faults, {after.ru_stime - before.ru_stime:.2f} s system / "
              f"{after.ru_utime - before.ru_utime:.2f} s user CPU time; {resident:.2f} GB "
              "resident")

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run()
        trace, = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
        events = json.load(gzip.open(trace))["traceEvents"]
    hlo = step.lower(*inputs).compile().as_text()
    bodies = dict(re.findall(r"^(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S))
    calls = dict(re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?calls=(%[\w.\-]+)", hlo, re.M))
    by_kind, heavy = collections.Counter(), 0.0
    for e in events:
        name = e.get("name", "")
        # Fusions and library calls; a conditional's event only wraps its branch's fusions.
        if e.get("ph") != "X" or name not in calls and not name.startswith(("dot", "conv")):
            continue
        by_kind[re.sub(r"(\.\d+)?(\.clone)?$", "", name)] += e["dur"] / 1e6
        if bodies.get(calls.get(name), "").count(" multiply(") >= args.heavy:
            heavy += e["dur"] / 1e6
    total = sum(by_kind.values())
    print(f"\nprofiled ops: {total:.2f} s over both threads (library matmuls that run on "
          f"their own thread pool show only their dispatch); direct-form computations "
          f"(>= {args.heavy} multiplies): {heavy:.2f} s ({heavy / total:.0%})")
    for kind, secs in by_kind.most_common(args.top):
        print(f"{secs * 1e3:9.1f} ms {secs / total:6.1%}  {kind}")


if __name__ == "__main__":
    main()
