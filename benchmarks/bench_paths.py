"""CPU speed on the default path next to the tuned path, JAX and PyTorch side by side.

    PYTHONPATH=. python benchmarks/bench_paths.py --torch-python /path/to/python-with-torch-timm

Two paths, each figure (framework, path, model) from its own process so that what the
process starts with is the only difference:

- ``default``: what a process gets with no settings: a plain ``jax.jit`` (no compiler
  options) in a process started without ``GLIBC_TUNABLES`` (or ``XLA_FLAGS``); PyTorch as
  it comes.
- ``tuned``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` for both frameworks and
  ``rx.compiler_options()`` in every ``jit`` (what this project's command lines set for
  themselves: ``rx.ops.reexec_with_huge_pages``).

The rounds alternate JAX and PyTorch, the paths and the models; the table shows medians over
rounds, their ratios and the ratio in each round. ``bench_cpu.py`` prints the same table
above its own (tuned-path) figures.
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
                  torch_python: str | None, paths: tuple[str, ...] = tuple(PATHS)) -> str:
    """The Markdown table: img/s per path, model and mode, JAX next to PyTorch."""
    common = ["--batch", str(batch), "--dtype", dtype, "--repeats", str(repeats)]
    # One process per model too: a model measured after another one's training step inherits
    # the heap glibc grew for it. PyTorch's SE-ResNeXt-50 inference on the default path ran at
    # 18.7 / 20.4 img/s after ResNeXt-50 in one process, 16.0 / 14.6 alone (two pairs of runs).
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for _ in range(rounds):
        for path in paths:
            tunables = PATHS[path]
            for name in models.split(","):
                which = ["--models", name, *common]
                runs.setdefault(("jax", path, name), []).append(run(
                    [sys.executable, os.path.join(HERE, "bench_paths.py"), "--worker", path,
                     *which], tunables)[name])
                if torch_python:
                    runs.setdefault(("torch", path, name), []).append(run(
                        [torch_python, os.path.join(HERE, "torch_cpu.py"), *which],
                        tunables)["models"][name])

    def median(framework: str, path: str, name: str, key: str) -> float | None:
        values = [r[key] for r in runs.get((framework, path, name), [])]
        return statistics.median(values) if values else None

    def round_ratios(path: str, name: str, key: str) -> str:
        theirs = runs.get(("torch", path, name))
        if not theirs:
            return "-"
        return ", ".join(f"{j[key] / t[key]:.2f}"
                         for j, t in zip(runs[("jax", path, name)], theirs, strict=True))

    lines = [f"{dtype}, batch {batch}, 224x224, {os.cpu_count()} cores, medians of {rounds} "
             f"processes x {repeats} steps (img/s); the last column is the ratio in each "
             "round, JAX and PyTorch run one after the other\n",
             "| path | model | mode | JAX | PyTorch | JAX / PyTorch | per round |",
             "|---|---|---|---|---|---|---|"]
    for path in paths:
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
    parser.add_argument("--paths", default=",".join(PATHS), help="default, tuned or both")
    parser.add_argument("--torch-python", default=None)
    parser.add_argument("--worker", choices=list(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.models, args.batch, args.repeats, args.dtype)
    paths = tuple(p for p in args.paths.split(",") if p)
    if not paths or set(paths) - set(PATHS):
        parser.error(f"--paths: choose from {', '.join(PATHS)}")
    print(compare_paths(args.models, args.batch, args.dtype, args.repeats, args.rounds,
                        args.torch_python, paths))


if __name__ == "__main__":
    main()
