"""The README's TPU table: every recipe compiled for the slices its docstring names
(``--topology=...``) by ``python -m resnext_jax.main --mode=compile``, on this
host, with libtpu (``pip install "resnext_jax[tpu]"``). Nothing runs on a TPU.

python benchmarks/tpu_table.py [--only NAME ...] [--out DIR]

Prints one Markdown row per recipe from the command's own ``--report`` JSON; each compile
takes minutes on a 2-core host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time


def runs() -> list[tuple[str, str]]:
    """(config, topology) for every ``--topology=`` a packaged config's docstring names."""
    import importlib.util

    from resnext_jax.train.config import config_path, list_configs

    found = []
    for name in list_configs():
        spec = importlib.util.spec_from_file_location(name, config_path(name))
        doc = spec.loader.get_source(name) or ""
        doc = doc.split('"""')[1] if doc.count('"""') >= 2 else ""
        found += [(name, topology) for topology in re.findall(r"--topology=([\w-]+)", doc)]
    return found


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def row(config: str, topology: str, r: dict) -> str:
    t, e = r["train"], r["eval"]

    def need(p: dict) -> int:
        return (p["argument_bytes"] + p["temp_bytes"] + p["output_bytes"] - p["alias_bytes"]
                + p["code_bytes"])

    moved = ", ".join(f"{kind} {count} x / {size / 2**20:.0f} MiB"
                      for kind, (count, size) in t["collectives"].items()) or "none"
    return (f"| `{config}` | {topology} | {r['model']} {r['dtype']} | {r['batch_per_chip']} | "
            f"{_gib(need(t))} / {_gib(need(e))} of {r['hbm_gib']:g} | "
            f"{t['flops'] / 1e12:.2f} | {moved} | {t['compile_seconds']:.0f} + "
            f"{e['compile_seconds']:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="config names to run (default: all)")
    parser.add_argument("--out", default="/tmp/resnext_tpu_table", help="where reports go")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print("| recipe | slice | model, compute | images a chip | HBM GiB a chip: train / eval "
          "of capacity | train TFLOPs a chip | train collectives a chip | compile train + "
          "eval |\n|---|---|---|---:|---|---:|---|---:|", flush=True)
    for config, topology in runs():
        if args.only and config not in args.only:
            continue
        report = os.path.join(args.out, f"{config}.{topology}.json")
        command = [sys.executable, "-m", "resnext_jax.main", "--mode=compile",
                   f"--config={config}", f"--topology={topology}", f"--report={report}"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 and not os.path.exists(report):
            print(f"| `{config}` | {topology} | failed: {done.stderr.strip()[-300:]} |",
                  flush=True)
            continue
        with open(report) as f:
            print(row(config, topology, json.load(f)), flush=True)
        print(f"  ({' '.join(command[1:])}: {time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
