"""CPU speed of every lowering, side by side with PyTorch + timm (channels_last).

    PYTHONPATH=. python benchmarks/bench_cpu.py --torch-python /work/torchenv/bin/python

Prints, in one run: ``bench_paths.py``'s table (the default and the tuned path, JAX next to
PyTorch, each figure from its own process); then, on the tuned path
(this process re-executes itself with glibc's huge-page malloc, like the command lines),
the machine's dense-matmul peak; img/s of inference and of a full SGD
training step of ResNeXt-50 / SE-ResNeXt-50 at 224 with each lowering, with compile times,
the PyTorch figures, ratios and the fraction of peak; per-layer forward / input-gradient /
kernel-gradient times of ResNeXt-50's grouped convolutions; and the compile time of a
ResNeXt-101 32x8d training step. XLA's own lowering trains at minutes per step on a CPU,
so its training step runs only when named in ``--train-lowerings``. Every JAX figure is
compiled with ``rx.compiler_options()`` (what the trainer uses), except the rows marked
"XLA defaults" (``--xla-defaults``), which show what those options change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_paths import compare_paths  # noqa: E402
from common import (  # noqa: E402
    jit,
    make_steps,
    median_seconds,
    model_gflops,
    table,
    time_model,
    train_state,
)

import resnext_jax as rx  # noqa: E402
from resnext_jax import ops  # noqa: E402

# ResNeXt-50 32x4d's grouped 3x3 convolutions: (input size, channels, stride, how many).
RESNEXT50_GROUPED = [(56, 128, 1, 3), (56, 256, 2, 1), (28, 256, 1, 3), (28, 512, 2, 1),
                     (14, 512, 1, 5), (14, 1024, 2, 1), (7, 1024, 1, 2)]


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    """Dense matmul GFLOP/s: the machine's practical peak for this dtype."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / median_seconds(lambda: jax.block_until_ready(f(a, a)), repeats) / 1e9


def layer_times(batch, size, channels, stride, lowering, dtype, repeats, groups=32,
                options=None):
    """Milliseconds of forward, input gradient and kernel gradient of one grouped conv,
    compiled with XLA ``options`` (default: ``rx.compiler_options()``)."""
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels), dtype)
    k = (jax.random.normal(jax.random.key(1), (3, 3, channels // groups, channels)) * 0.1
         ).astype(dtype)

    def conv(x, k):
        return ops.conv2d(x, k, strides=stride, padding=((1, 1), (1, 1)),
                          feature_group_count=groups, lowering=lowering)

    dy = jax.random.normal(jax.random.key(2), jax.eval_shape(conv, x, k).shape, dtype)
    fns = {"fwd": jit(lambda x, k, dy: conv(x, k), options),
           "dx": jit(lambda x, k, dy: jax.vjp(lambda v: conv(v, k), x)[1](dy)[0], options),
           "dk": jit(lambda x, k, dy: jax.vjp(lambda v: conv(x, v), k)[1](dy)[0], options)}
    out = {}
    for what, fn in fns.items():
        # A linear op's gradient does not need its forward output, so XLA drops it:
        # these are the gradients' own times.
        out[what] = median_seconds(lambda fn=fn: jax.block_until_ready(fn(x, k, dy)),
                                   repeats) * 1e3
    return out


def torch_figures(args, models: str, layers):
    """PyTorch's figures from a subprocess (never at the same time as JAX's)."""
    if not args.torch_python:
        return None
    cmd = [args.torch_python, os.path.join(os.path.dirname(__file__), "torch_cpu.py"),
           "--models", models, "--batch", str(args.batch), "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--layers", json.dumps(layers)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(f"PyTorch reference failed ({' '.join(cmd[:2])}):\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_seconds(name: str, lowering: str, dtype, batch: int) -> float:
    """Seconds to lower and compile a training step (abstract inputs, nothing runs)."""
    model = rx.create_model(name, lowering=lowering, dtype=dtype)
    images = jax.ShapeDtypeStruct((batch, 224, 224, 3), dtype)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    tx = optax.sgd(0.1, momentum=0.9)
    _, train = make_steps(model, tx)
    state = jax.eval_shape(lambda v: train_state(model, tx, v), variables)
    start = time.perf_counter()
    train.lower(state, {"image": images, "label": labels}).compile()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnext50_32x4d,seresnext50_32x4d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--lowerings", default="xla,einsum_grad,fast",
                        help="lowerings for inference and per-layer times")
    parser.add_argument("--train-lowerings", default="einsum_grad,fast")
    parser.add_argument("--xla-defaults", default="fast",
                        help="lowerings also measured without rx.compiler_options (whole "
                             "networks and layers)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer-batch", type=int, default=None, help="default: --batch")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--compile-models", default="resnext101_32x8d",
                        help="models whose training-step compile time is measured ('' skips)")
    parser.add_argument("--torch-python", default=None,
                        help="a Python with torch + timm, e.g. /work/torchenv/bin/python")
    parser.add_argument("--path-rounds", type=int, default=1,
                        help="processes per figure of the paths table (0 skips it)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.path_rounds:
        print(compare_paths(",".join(models), args.batch, args.dtype, args.repeats,
                            args.path_rounds, args.torch_python) + "\n", flush=True)
    dtype = jnp.dtype(args.dtype)
    lowerings = [m for m in args.lowerings.split(",") if m]
    train_lowerings = [m for m in args.train_lowerings.split(",") if m]
    # (row label, lowering, XLA options): None means rx.compiler_options().
    variants = [(lo, lo, None) for lo in lowerings] + [
        (f"{lo} (XLA defaults)", lo, {}) for lo in args.xla_defaults.split(",") if lo]
    layer_batch = args.layer_batch or args.batch
    layers = [] if args.skip_layers else RESNEXT50_GROUPED

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch}, "
          f"{args.dtype}, median of {args.repeats}; load average {os.getloadavg()[0]:.1f}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (applies to PyTorch too)")
    peak = matmul_peak(dtype)
    print(f"dense matmul peak ({args.dtype}, 2048^3): {peak:.0f} GFLOP/s\n")

    # PyTorch runs just before JAX for each model / the layers, so that the two share the
    # (possibly busy) machine's conditions as closely as possible but never its cores.
    rows = []
    for name in models:
        ref = torch_figures(args, name, [])
        gflops = model_gflops(name)
        for label, lowering, options in variants:
            modes = ["infer"] + (["train"] if lowering in train_lowerings else [])
            r = time_model(name, lowering, dtype, args.batch, modes, args.repeats,
                           options=options)
            infer, train = r.get("infer_img_s"), r.get("train_img_s")
            rows.append([name, label, infer, train,
                         r.get("infer_compile_s"), r.get("train_compile_s"),
                         gflops * infer / peak,
                         3 * gflops * train / peak if train else None])
        if ref:
            t = ref["models"][name]
            rows.append([name, "PyTorch channels_last", t["infer_img_s"], t["train_img_s"],
                         None, None, gflops * t["infer_img_s"] / peak,
                         3 * gflops * t["train_img_s"] / peak])
            for row in rows[-len(variants) - 1:-1]:
                rows.append([name, f"{row[1]} / PyTorch", row[2] / t["infer_img_s"],
                             row[3] / t["train_img_s"] if row[3] else None, None, None, None,
                             None])
        print(f"{name}: {gflops:.2f} GFLOP per image forward (3x for a training step); "
              + (f"PyTorch {ref['torch']}, timm {ref['timm']}, {ref['threads']} threads; "
                 if ref else "") + f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print()
    print(table(["model", "lowering", "infer img/s", "train img/s", "infer compile s",
                 "train compile s", "infer peak frac", "train peak frac"],
                [[("" if v is None else v) for v in row] for row in rows]))

    if layers:
        ref = torch_figures(args, "", [(layer_batch, s, c, 32, st) for s, c, st, _ in layers])
        print(f"\nResNeXt-50 grouped 3x3 convs (32 groups), batch {layer_batch}, ms:")
        lrows = []
        for i, (size, channels, stride, count) in enumerate(layers):
            for label, lowering, options in variants:
                t = layer_times(layer_batch, size, channels, stride, lowering, dtype,
                                args.repeats, options=options)
                lrows.append([f"{size}x{size}x{channels} s{stride} (x{count})", label,
                              t["fwd"], t["dx"], t["dk"], t["dk"] / t["fwd"]])
            if ref:
                t = ref["layers"][i]
                lrows.append([lrows[-1][0], "PyTorch", t["fwd"], t["dx"], t["dk"],
                              t["dk"] / t["fwd"] if t["fwd"] else ""])
        print(table(["layer", "lowering", "forward", "input grad", "kernel grad",
                     "kernel grad / forward"], lrows))

    for name in filter(None, args.compile_models.split(",")):
        seconds = compile_seconds(name, "auto", dtype, args.batch)
        print(f"\n{name} training step (auto lowering, batch {args.batch}) compiles in "
              f"{seconds:.1f} s")


if __name__ == "__main__":
    rx.ops.reexec_with_huge_pages()  # the tuned path, as the command lines run
    main()
