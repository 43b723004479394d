"""GPU speed of every lowering: ResNeXt-101 32x4d and SE-ResNeXt-101 32x4d, bf16.

    PYTHONPATH=. python benchmarks/bench_gpu.py            # one NVIDIA GPU, < 8 minutes

Prints img/s of a full SGD training step (batch 128) and of inference (batch 256) with each
lowering, compile times, and the model FLOP utilisation (MFU): model FLOP/s (3x the forward
count for training) over the GPU's measured dense bf16 matmul FLOP/s, and over its nominal
dense bf16 peak where the device is known. Anchors (NVIDIA DeepLearningExamples, PyTorch AMP,
one A100, training): ResNeXt101-32x4d 1,211 img/s, SE-ResNeXt101-32x4d 855 img/s.
A time budget (``--budget-s``) skips what would not finish, and says so. Last, the collectives
of the trainer's compiled train step over all local GPUs (counts, and all-reduce bytes
against the ideal of data parallelism; see benchmarks/bench_scaling.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_scaling import step_rows  # noqa: E402
from common import median_seconds, model_gflops, table, time_model  # noqa: E402

# Nominal dense bf16 tensor-core TFLOP/s (vendor data sheets, without sparsity).
NOMINAL_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L4": 121.0,
                       "A10": 125.0, "V100": 125.0, "L40S": 362.0, "RTX 4090": 165.0}
ANCHORS = {"resnext101_32x4d": 1211.0, "seresnext101_32x4d": 855.0}


def matmul_peak_tflops(n: int = 8192, repeats: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / median_seconds(lambda: jax.block_until_ready(f(a, a)), repeats) / 1e12


def nominal_tflops(kind: str) -> float | None:
    for name, tflops in NOMINAL_BF16_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnext101_32x4d,seresnext101_32x4d")
    parser.add_argument("--lowerings", default="xla,einsum_grad,fast")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--matmul-size", type=int, default=8192,
                        help="side of the square bf16 matmul that measures the peak")
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="skip configurations once this much time has passed")
    args = parser.parse_args()
    start = time.perf_counter()
    device = jax.devices()[0]
    if device.platform != "gpu":
        print(f"warning: running on {device.platform}, not a GPU; the figures mean little")
    kind = getattr(device, "device_kind", device.platform)
    peak = matmul_peak_tflops(args.matmul_size)
    nominal = nominal_tflops(kind)
    print(f"# {kind}, jax {jax.__version__}; bf16 matmul {peak:.1f} TFLOP/s measured"
          + (f", {nominal:.0f} nominal" if nominal else "") + "\n", flush=True)

    rows, skipped = [], []
    for name in args.models.split(","):
        gflops = model_gflops(name)
        for lowering in args.lowerings.split(","):
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{name}/{lowering}")
                continue
            try:
                train = time_model(name, lowering, jnp.bfloat16, args.train_batch, ["train"],
                                   args.repeats)
                infer = time_model(name, lowering, jnp.bfloat16, args.infer_batch, ["infer"],
                                   args.repeats)
            except Exception as error:  # noqa: BLE001 - report (e.g. out of memory) and go on
                print(f"{name} / {lowering} failed: {type(error).__name__}: {error}"[:500])
                continue
            t_flops = 3 * gflops * train["train_img_s"] / 1e3  # TFLOP/s
            i_flops = gflops * infer["infer_img_s"] / 1e3
            rows.append([name, lowering, train["train_img_s"], infer["infer_img_s"],
                         train["train_compile_s"], infer["infer_compile_s"],
                         t_flops / peak, i_flops / peak,
                         t_flops / nominal if nominal else "",
                         train["train_img_s"] / ANCHORS[name] if name in ANCHORS else ""])
            print(f"{name} / {lowering}: train {train['train_img_s']:.0f} img/s, "
                  f"inference {infer['infer_img_s']:.0f} img/s", flush=True)
    print()
    print(table(["model", "lowering", f"train img/s (b{args.train_batch})",
                 f"infer img/s (b{args.infer_batch})", "train compile s", "infer compile s",
                 "train MFU (measured peak)", "infer MFU (measured peak)",
                 "train MFU (nominal)", "train / NVIDIA A100 AMP anchor"], rows))
    if skipped:
        print(f"\nskipped (time budget {args.budget_s:.0f} s): {', '.join(skipped)}")
    print_collectives(args.models.split(","), args.train_batch)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def print_collectives(names: list[str], global_batch: int) -> None:
    """What the trainer's compiled train step moves between this machine's GPUs: no
    all-gather, and about one all-reduce of the gradients and BatchNorm statistics."""
    devices = jax.device_count()
    rows = step_rows(names, max(1, global_batch // devices), dtype="bfloat16")
    print(f"\ncompiled train step on {devices} device(s), per device:")
    print(table(["model", "global batch", "all-gather", "all-to-all", "all-reduce",
                 "all-reduce MiB", "all-reduce / ideal"],
                [[r["model"], r["global_batch"], int(r["all-gather_count"]),
                  int(r["all-to-all_count"]), int(r["all-reduce_count"]),
                  r["all-reduce_bytes"] / 2**20,
                  r["all-reduce_bytes"] / r["ideal_all_reduce_bytes"]] for r in rows]))


if __name__ == "__main__":
    main()
