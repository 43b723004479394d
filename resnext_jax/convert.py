"""Convert weights between PyTorch layouts and resnext_jax files, with a report.

    python -m resnext_jax.convert SRC DST [--model NAME]

SRC: anything ``resnext_jax.load`` reads: a PyTorch checkpoint (.safetensors, .pth, .bin), a
Hub id (``timm/seresnext50_32x4d.racm_in1k``), a model or weight-set name, our own .msgpack,
a training workdir. DST: ``.msgpack`` writes Flax variables with the architecture and the
eval transform; ``.safetensors`` writes a PyTorch state dict (``--layout``: torchvision, timm
or legacy; default the model's own). The written file is read back and compared tensor by
tensor before the command succeeds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from flax.traverse_util import flatten_dict

from resnext_jax.console import start_jax
from resnext_jax.errors import OneLineParser, UsageError, non_negative_int, run_cli
from resnext_jax.model import count_params
from resnext_jax.weights import LAYOUTS, WeightsError, load, native, read_state_dict


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m resnext_jax.convert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint file, Hub id, model or weight-set name, workdir")
    parser.add_argument("dst", help="output: .msgpack (Flax) or .safetensors (PyTorch layout)")
    parser.add_argument("--model", help="zoo model name (default: what the source says, or "
                        "the one model whose shapes the checkpoint fits)")
    parser.add_argument("--num-classes", type=non_negative_int, default=None,
                        help="build the model with this many classes; a different head in "
                        "the checkpoint is replaced by a new, randomly initialised one")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="PyTorch layout of a .safetensors output (default: the model's)")
    return parser


def _read_back(dst: str, expected: dict[str, np.ndarray]) -> int:
    """Compare the written file with what was meant to be written; the tensor count."""
    if dst.endswith(native.SUFFIX):
        written = {"/".join(k): v for k, v in flatten_dict(native.read(dst)[1]).items()}
    else:
        written = read_state_dict(dst)
    differ = [k for k in expected if k not in written
              or not np.array_equal(np.asarray(written[k]), np.asarray(expected[k]))]
    if differ or len(written) != len(expected):
        raise WeightsError(f"{dst} does not read back as written: {differ[:5]}")
    return len(written)


def convert(args: argparse.Namespace) -> list[str]:
    """Run one conversion; the report lines."""
    if not args.dst.endswith((native.SUFFIX, ".safetensors")):
        raise WeightsError(f"{args.dst}: the output must end in .msgpack or .safetensors")
    if os.path.isdir(args.dst):
        raise UsageError(f"{args.dst} is a folder; give a file name ending in .msgpack or "
                         ".safetensors")
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    loaded = load(args.src, args.model, **overrides)
    cfg, report = loaded.cfg, loaded.report
    lines = [f"model:    {cfg.model}, {count_params(loaded.variables):,} parameters",
             f"source:   {report.source}" + (f" (resolved from {args.src})"
                                             if report.source != args.src else ""),
             f"layout:   {report.layout}",
             f"tensors:  {report.loaded} mapped; no missing, unexpected or mismatched keys"]
    if report.dropped:
        lines.append(f"dropped:  {len(report.dropped)} BN num_batches_tracked counters "
                     "(no Flax equivalent)")
    lines += [f"note:     {n}" for n in report.notes]
    if args.dst.endswith(native.SUFFIX):
        loaded.save(args.dst)
        expected = {"/".join(k): v for k, v in flatten_dict(loaded.variables).items()}
        kind = "Flax variables + architecture + transform (msgpack)"
    else:
        expected = loaded.export_torch(args.dst, layout=args.layout)
        kind = f"PyTorch state dict, {args.layout or 'model'} layout (safetensors)"
    count = _read_back(args.dst, expected)
    size = os.path.getsize(args.dst) / 2**20
    lines.append(f"wrote:    {args.dst}: {kind}, {count} tensors, {size:.1f} MiB, read back "
                 "identical")
    t = loaded.transform
    lines.append(f"transform: {t.size}x{t.size} crop, crop_pct {t.crop_pct:.4f}, "
                 f"{t.interpolation}, mean {t.mean}, std {t.std} ({cfg.name})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def run() -> int:
        start_jax()
        lines = convert(args)
        print(f"resnext_jax.convert: {args.src} -> {args.dst}")
        print("\n".join("  " + line for line in lines))
        return 0

    return run_cli("resnext_jax.convert", run)


if __name__ == "__main__":
    sys.exit(main())
