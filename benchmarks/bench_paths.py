"""CPU speed on the default path next to the tuned path, JAX and PyTorch side by side.

    PYTHONPATH=. python benchmarks/bench_paths.py --torch-python /path/to/python-with-torch-timm

The default path is what a process gets with no settings: a plain ``jax.jit`` (no compiler
options) in a process started without ``GLIBC_TUNABLES``, and PyTorch as it comes. The tuned
path: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` for both frameworks (what this project's
command lines now set for themselves, ``rx.ops.reexec_with_huge_pages``) and
``rx.compiler_options`` in every ``jit``. Each figure comes from its own process, so that
the tunable (read at process start) is the only difference; the rounds alternate JAX and
PyTorch and both paths, and the table shows medians over rounds and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PATHS = {"default": {"GLIBC_TUNABLES": None}, "tuned": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}


def worker(path: str, models: str, batch: int, repeats: int, dtype: str) -> None:
    """In the child: JAX's figures for one path, as one JSON line."""
    import jax.numpy as jnp
    from common import time_model

    options = {} if path == "default" else None  # None: rx.compiler_options(train=...)
    figures = {name: time_model(name, "auto", jnp.dtype(dtype), batch, ("infer", "train"),
                                repeats, options=options)
               for name in models.split(",")}
    print(json.dumps(figures))


def run(cmd: list[str], path: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if PATHS[path]["GLIBC_TUNABLES"]:
        env["GLIBC_TUNABLES"] = PATHS[path]["GLIBC_TUNABLES"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnext50_32x4d,seresnext50_32x4d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per figure")
    parser.add_argument("--torch-python", default=None)
    parser.add_argument("--worker", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.models, args.batch, args.repeats, args.dtype)

    common = ["--models", args.models, "--batch", str(args.batch), "--dtype", args.dtype,
              "--repeats", str(args.repeats)]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for path in PATHS:
            runs.setdefault(("jax", path), []).append(
                run([sys.executable, __file__, "--worker", path, *common], path))
            if args.torch_python:
                runs.setdefault(("torch", path), []).append(
                    run([args.torch_python, os.path.join(HERE, "torch_cpu.py"), *common],
                        path)["models"])

    def median(framework: str, path: str, name: str, key: str) -> float | None:
        values = [r[name][key] for r in runs.get((framework, path), [])]
        return statistics.median(values) if values else None

    print(f"{args.dtype}, batch {args.batch}, 224x224, {os.cpu_count()} cores, "
          f"medians of {args.rounds} processes x {args.repeats} steps (img/s)\n")
    print("| path | model | mode | JAX | PyTorch | JAX / PyTorch |\n|---|---|---|---|---|---|")
    for path in PATHS:
        for name in args.models.split(","):
            for mode in ("train", "infer"):
                ours = median("jax", path, name, f"{mode}_img_s")
                theirs = median("torch", path, name, f"{mode}_img_s")
                ratio = f"{ours / theirs:.2f}x" if theirs else "-"
                print(f"| {path} | {name} | {mode} | {ours:.2f} | "
                      f"{f'{theirs:.2f}' if theirs else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
