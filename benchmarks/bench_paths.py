"""CPU speed on the default path next to the tuned path, JAX and PyTorch side by side.

    PYTHONPATH=. python benchmarks/bench_paths.py --torch-python /path/to/python-with-torch-timm

Two paths, each figure from its own process so that what the process starts with is the
only difference:

- ``default``: what a process gets with no settings: a plain ``jax.jit`` (no compiler
  options) in a process started without ``GLIBC_TUNABLES`` (or ``XLA_FLAGS``); PyTorch as
  it comes.
- ``tuned``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` for both frameworks and
  ``rx.compiler_options()`` in every ``jit`` (what this project's command lines set for
  themselves: ``rx.ops.reexec_with_huge_pages``).

The rounds alternate JAX and PyTorch and the paths; the table shows medians over rounds and
their ratios. ``bench_cpu.py`` prints the same table above its own (tuned-path) figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from resnext_jax.ops.compiler import HUGE_PAGES

HERE = os.path.dirname(os.path.abspath(__file__))
PATHS = {"default": None, "tuned": HUGE_PAGES}  # path -> GLIBC_TUNABLES


def worker(path: str, models: str, batch: int, repeats: int, dtype: str) -> None:
    """In the child: JAX's figures for one path, as one JSON line."""
    import jax.numpy as jnp
    from common import time_model

    options = None if path == "tuned" else {}  # None: rx.compiler_options()
    figures = {name: time_model(name, "auto", jnp.dtype(dtype), batch, ("infer", "train"),
                                repeats, options=options)
               for name in models.split(",")}
    print(json.dumps(figures))


def run(cmd: list[str], tunables: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_paths(models: str, batch: int, dtype: str, repeats: int, rounds: int,
                  torch_python: str | None) -> str:
    """The Markdown table: img/s per path, model and mode, JAX next to PyTorch."""
    common = ["--models", models, "--batch", str(batch), "--dtype", dtype,
              "--repeats", str(repeats)]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(rounds):
        for path, tunables in PATHS.items():
            runs.setdefault(("jax", path), []).append(
                run([sys.executable, os.path.join(HERE, "bench_paths.py"), "--worker", path,
                     *common], tunables))
            if torch_python:
                runs.setdefault(("torch", path), []).append(
                    run([torch_python, os.path.join(HERE, "torch_cpu.py"), *common],
                        tunables)["models"])

    def median(framework: str, path: str, name: str, key: str) -> float | None:
        values = [r[name][key] for r in runs.get((framework, path), [])]
        return statistics.median(values) if values else None

    def round_ratios(path: str, name: str, key: str) -> str:
        theirs = runs.get(("torch", path))
        if not theirs:
            return "-"
        return ", ".join(f"{j[name][key] / t[name][key]:.2f}"
                         for j, t in zip(runs[("jax", path)], theirs, strict=True))

    lines = [f"{dtype}, batch {batch}, 224x224, {os.cpu_count()} cores, medians of {rounds} "
             f"processes x {repeats} steps (img/s); the last column is the ratio in each "
             "round, JAX and PyTorch run one after the other\n",
             "| path | model | mode | JAX | PyTorch | JAX / PyTorch | per round |",
             "|---|---|---|---|---|---|---|"]
    for path in PATHS:
        for name in models.split(","):
            for mode in ("train", "infer"):
                key = f"{mode}_img_s"
                ours, theirs = median("jax", path, name, key), median("torch", path, name, key)
                ratio = f"{ours / theirs:.2f}x" if theirs else "-"
                lines.append(f"| {path} | {name} | {mode} | {ours:.2f} | "
                             f"{f'{theirs:.2f}' if theirs else '-'} | {ratio} | "
                             f"{round_ratios(path, name, key)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnext50_32x4d,seresnext50_32x4d")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per figure")
    parser.add_argument("--torch-python", default=None)
    parser.add_argument("--worker", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.models, args.batch, args.repeats, args.dtype)
    print(compare_paths(args.models, args.batch, args.dtype, args.repeats, args.rounds,
                        args.torch_python))


if __name__ == "__main__":
    main()
