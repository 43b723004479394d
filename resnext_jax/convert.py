"""Convert weights between PyTorch layouts and resnext_jax files, with a report.

    python -m resnext_jax.convert SRC DST --model NAME

SRC: a PyTorch checkpoint (.safetensors, .pth, .bin), a Hub id
(``timm/seresnext50_32x4d.racm_in1k``), a known weight-set name, or our own .msgpack.
DST: ``.msgpack`` writes Flax variables with the architecture; ``.safetensors`` writes a
PyTorch state dict (``--layout``: torchvision, timm or legacy; default the model's own).
The written file is read back and compared tensor by tensor before the command succeeds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from resnext_jax import zoo
from resnext_jax.model import count_params
from resnext_jax.weights import (
    PRETRAINED,
    WeightsError,
    export_torch,
    load_pretrained,
    read_state_dict,
    read_weights,
    resolve_source,
    save_weights,
)
from resnext_jax.weights.guess import matching_models
from resnext_jax.weights.layouts import LAYOUTS, detect_layout, strip_prefix
from resnext_jax.weights.native import NATIVE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resnext_jax.convert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint file, Hub id or weight-set name")
    parser.add_argument("dst", help="output: .msgpack (Flax) or .safetensors (PyTorch layout)")
    parser.add_argument("--model", help="zoo model name (default: from a .msgpack's metadata, "
                        "or the one model whose shapes the checkpoint fits)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="build the model with this many classes; a different head in "
                        "the checkpoint is replaced by a new, randomly initialised one")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="PyTorch layout of a .safetensors output (default: the model's)")
    return parser


def _model_name(args: argparse.Namespace, path: str) -> tuple[str, str]:
    """The zoo name to build and how it was chosen."""
    if args.model:
        return args.model, "given"
    if path.endswith(NATIVE):
        name = read_weights(path)[0].get("model_name")
        if name:
            return name, "from the file's metadata"
    else:
        tensors = read_state_dict(path)
        prefix = strip_prefix(tensors)
        stripped = {k[len(prefix):]: v for k, v in tensors.items()}
        found = matching_models(stripped, detect_layout(stripped))
        if len(found) == 1:
            return found[0], "the only zoo model the checkpoint's shapes fit"
        if found:
            raise WeightsError(f"{path} fits several models ({', '.join(found)}): pass --model")
    raise WeightsError(f"cannot tell which model {path} holds: pass --model NAME "
                       "(see resnext_jax.list_models())")


def _read_back(dst: str, expected: dict[str, np.ndarray]) -> int:
    """Compare the written file with what was meant to be written; the tensor count."""
    if dst.endswith(NATIVE):
        written = {"/".join(k): v for k, v in flatten_dict(read_weights(dst)[1]).items()}
    else:
        written = read_state_dict(dst)
    differ = [k for k in expected if k not in written
              or not np.array_equal(np.asarray(written[k]), np.asarray(expected[k]))]
    if differ or len(written) != len(expected):
        raise WeightsError(f"{dst} does not read back as written: {differ[:5]}")
    return len(written)


def convert(args: argparse.Namespace) -> list[str]:
    """Run one conversion; the report lines."""
    src_path = resolve_source(args.src)
    name, how = _model_name(args, src_path)
    overrides: dict[str, Any] = {}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    model = zoo.create_model(name, **overrides)
    variables, report = load_pretrained(model, src_path, model_name=name,
                                        reset_head="num_classes" in overrides)
    lines = [f"model:    {name} ({how}), {count_params(variables):,} parameters",
             f"source:   {src_path}" + (f" (resolved from {args.src})"
                                        if src_path != args.src else ""),
             f"layout:   {report.layout}",
             f"tensors:  {report.loaded} mapped; no missing, unexpected or mismatched keys"]
    if report.dropped:
        lines.append(f"dropped:  {len(report.dropped)} BN num_batches_tracked counters "
                     "(no Flax equivalent)")
    lines += [f"note:     {n}" for n in report.notes]
    # The weight set, also when named by its Hub id: its preprocessing travels with the file.
    weight_set = args.src.removeprefix("hf-hub:").split("/")[-1]
    weight_set = weight_set if weight_set in PRETRAINED else None
    if args.dst.endswith(NATIVE):
        save_weights(args.dst, variables, model, model_name=name, pretrained=weight_set)
        expected = {"/".join(k): v for k, v in flatten_dict(variables).items()}
        kind = "Flax variables + architecture (msgpack)"
    elif args.dst.endswith(".safetensors"):
        expected = export_torch(args.dst, variables, model, layout=args.layout, model_name=name)
        kind = f"PyTorch state dict, {args.layout or 'model'} layout (safetensors)"
    else:
        raise WeightsError(f"{args.dst}: the output must end in .msgpack or .safetensors")
    count = _read_back(args.dst, expected)
    size = os.path.getsize(args.dst) / 2**20
    lines.append(f"wrote:    {args.dst}: {kind}, {count} tensors, {size:.1f} MiB, read back "
                 "identical")
    if weight_set:
        cfg = PRETRAINED[weight_set]
        lines.append(f"preprocess: {cfg.input_size[0]}x{cfg.input_size[1]} crop, crop_pct "
                     f"{cfg.crop_pct:.4f}, {cfg.interpolation}, mean {cfg.mean}, std {cfg.std}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        lines = convert(args)
    except (WeightsError, ValueError) as err:
        print(f"resnext_jax.convert: error: {err}", file=sys.stderr)
        return 1
    print(f"resnext_jax.convert: {args.src} -> {args.dst}")
    print("\n".join("  " + line for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
