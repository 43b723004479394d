"""Features (or top-k ImageNet labels) for a folder of images, from the command line.

    python -m resnext_jax.extract --model seresnext50_32x4d \\
        --pretrained timm/seresnext50_32x4d.racm_in1k photos/ --out features.npz
    python -m resnext_jax.extract --model resnext50_32x4d --pretrained True cat.jpg --topk 5

Images of any size and format Pillow reads are resized and cropped as the weights were
evaluated (their pretrained config), batched at one fixed shape (the last batch is padded, so
``jit`` compiles once) and written to ``.npz`` (``features``, ``files``, ``skipped``) or
``.npy`` plus ``<out>.files.jsonl`` (a JSON string a line, row for row). Results go to
``<out>.parts/`` in atomically written chunks first: a run that is interrupted and started
again with the same command resumes from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnext_jax.digest import tree_digest
from resnext_jax.errors import (
    OneLineParser,
    UsageError,
    non_negative_int,
    positive_int,
    run_cli,
)
from resnext_jax.extract_inputs import fingerprint, image_batches, list_images
from resnext_jax.extract_store import ChunkStore, write_output
from resnext_jax.ops import resolve_dtype
from resnext_jax.transforms import INTERPOLATIONS, Transform
from resnext_jax.weights.native import architecture

HEAD_OUTPUTS = ("pre_logits", "logits")


def _platform() -> str:
    """Where extraction runs (this process's devices): what "auto" dtypes resolve for."""
    import jax

    return jax.local_devices()[0].platform


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted-synset) order, the order of
    TFDS's ``imagenet2012`` labels (copied from tensorflow-datasets' list)."""
    from importlib.resources import files

    text = files("resnext_jax").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, probabilities)`` of the ``k`` most likely classes per row, best first."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, -1)


def layers_of(model: Any) -> tuple[str, ...]:
    """What ``--layer`` may name for ``model``: the pooled pre-logits, the logits, the stem
    map and each stage's output (from ``model.feature_info``)."""
    return HEAD_OUTPUTS + tuple(info["module"] for info in model.feature_info)


def make_forward(model: Any, layer: str, with_logits: bool) -> Callable[..., dict[str, Any]]:
    """A jitted ``(variables, images) -> {"features"[, "logits"]}`` in eval mode, with the
    batch split over this process's devices (a multiple of ``.devices`` rows)."""
    from resnext_jax.parallel import ParallelApply

    if layer not in layers_of(model):
        raise UsageError(f"unknown layer {layer!r}: this model has {', '.join(layers_of(model))}")
    needs_head = with_logits or layer == "logits"
    if needs_head and model.num_classes == 0:
        raise UsageError("logits and --topk need a classifier head; this model has none "
                         "(num_classes=0)")

    def outputs(module: Any, images: Any) -> dict[str, Any]:
        maps = module.forward_intermediates(images)
        last = maps[f"layer{len(module.layers)}"]
        out = {}
        if layer == "pre_logits":
            out["features"] = module.forward_head(last, pre_logits=True)
        elif layer in maps:
            out["features"] = maps[layer]
        if needs_head:
            out["logits"] = module.forward_head(last)
            out.setdefault("features", out["logits"])
        return out

    return ParallelApply(model, method=outputs)


def extract(model: Any, variables: Any, files: Sequence[Path], out: Path, pre: Transform, *,
            layer: str = "pre_logits", k: int = 0, batch_size: int = 32, chunk_batches: int = 8,
            workers: int = 4, settings: dict[str, Any] | None = None,
            on_topk: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
            progress: bool | None = None) -> dict[str, Any]:
    """Run ``model`` over ``files`` and write ``out``; returns the merged results plus
    ``skipped`` (``{file: reason}``). ``k > 0`` also keeps each image's top-k classes
    (``topk_index``, ``topk_prob``) and calls ``on_topk(file, indices, probs)`` per image."""
    from tqdm import tqdm

    if out.suffix not in (".npz", ".npy"):
        raise UsageError(f"--out must end in .npz or .npy, got {out}")
    forward = make_forward(model, layer, with_logits=k > 0)
    store = ChunkStore(out, {**(settings or {}), "layer": layer, "k": k,
                             "inputs": fingerprint(files), "weights": tree_digest(variables),
                             "model": {**architecture(model), "global_pool": model.global_pool,
                                       "dtype": str(resolve_dtype(model.dtype, _platform()))},
                             "preprocess": dataclasses.asdict(pre)})
    done = store.done()
    todo = [f for f in files if str(f) not in done]
    batch_size = -(-batch_size // forward.devices) * forward.devices  # rows split evenly
    skipped: dict[str, str] = {}
    pending: dict[str, list[np.ndarray]] = {}
    pending_files: list[str] = []

    def flush() -> None:
        if pending_files:
            store.add({key: np.concatenate(v) for key, v in pending.items()}, pending_files)
            pending.clear()
            pending_files.clear()

    with tqdm(total=len(files), initial=len(files) - len(todo), unit="img",
              disable=None if progress is None else not progress,  # None: only on a TTY
              file=sys.stderr) as bar:
        def report(path: Path, reason: str) -> None:
            skipped[str(path)] = reason
            bar.update(1)

        for images, names in image_batches(todo, pre, batch_size, workers, report):
            result = {key: np.asarray(v)[:len(names)] for key, v in
                      forward(variables, images).items()}
            batch = {"features": result["features"]}
            if k:
                batch["topk_index"], batch["topk_prob"] = topk(result["logits"], k)
                for i, name in enumerate(names if on_topk else ()):
                    on_topk(str(name), batch["topk_index"][i], batch["topk_prob"][i])
            for key, value in batch.items():
                pending.setdefault(key, []).append(value)
            pending_files.extend(map(str, names))
            bar.update(len(names))
            if len(pending_files) >= chunk_batches * batch_size:
                flush()
        flush()
    results = store.merged()
    if not results:
        raise UsageError(f"none of the {len(files)} file(s) is a readable image")
    write_output(out, results, sorted(skipped))
    store.remove()
    return {**results, "skipped": skipped}


def _transform(args: argparse.Namespace, carried: Transform | None, channels: int
               ) -> Transform:
    """The weights' own transform (``carried``: their weight set's, or the one their file
    records) with the flags replacing its fields; with neither, ImageNet's (mean and std 0.5
    for one channel), said once on stderr."""
    overrides = {k: v for k, v in dict(size=args.input_size, crop_pct=args.crop_pct,
                                       interpolation=args.interpolation, mean=args.mean,
                                       std=args.std).items() if v is not None}
    if carried is None and not overrides:
        print("note: these weights carry no transform; using ImageNet's (224 crop of the 256 "
              "short side, ImageNet mean/std); --input-size, --crop-pct, --interpolation, "
              "--mean and --std change it", file=sys.stderr)
    base = carried or Transform(channels=channels,
                                **({"mean": (0.5,), "std": (0.5,)} if channels == 1 else {}))
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as err:  # the transform's own check, e.g. a mean above 1
        raise UsageError(f"{err} (--input-size, --crop-pct, --mean, --std)") from None


def _label_names(path: str | None, num_classes: int) -> list[str]:
    if path:
        names = Path(path).read_text(encoding="utf-8").splitlines()
    elif num_classes == 1000:
        return [name.split(",")[0] for name in imagenet_labels()]
    else:
        names = [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"{path} has {len(names)} labels for a {num_classes}-class model")
    return names


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m resnext_jax.extract", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", help="zoo name (resnext_jax.list_models()); optional when the "
                   "weights say which model they are for")
    p.add_argument("--pretrained", help="weights: anything resnext_jax.load reads (a weight-set "
                   "or model name, a Hub id, a .safetensors/.pth/.msgpack file, a training "
                   "workdir), or True for --model's default set; without it the weights are "
                   "random")
    p.add_argument("--out", type=Path, help=".npz or .npy file (required unless --topk)")
    p.add_argument("--layer", default="pre_logits",
                   help="what to save: pre_logits (pooled, default), logits, stem, or a "
                   "stage's maps (layer1 ... as the model's feature_info names them)")
    p.add_argument("--topk", type=non_negative_int, default=0, metavar="K",
                   help="print the K most likely classes of each image")
    p.add_argument("--labels", help="class names, one a line (default: ImageNet for 1000 "
                   "classes, else class indices)")
    p.add_argument("--num-classes", type=non_negative_int,
                   help="head size, when the weights' differs from the model's default")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=positive_int, default=4, help="image-decoding threads")
    p.add_argument("--input-size", type=positive_int, help="override the crop size")
    p.add_argument("--crop-pct", type=float, help="override the crop fraction")
    p.add_argument("--interpolation", choices=INTERPOLATIONS)
    p.add_argument("--mean", type=_floats, help="per channel, comma-separated, on the 0-1 "
                   "scale (e.g. 0.485,0.456,0.406)")
    p.add_argument("--std", type=_floats, help="per channel, comma-separated, on the 0-1 scale")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None and not args.topk:
        build_parser().error("give --out FILE, --topk K, or both")
    return run_cli("resnext_jax.extract", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    import jax

    import resnext_jax as rx
    from resnext_jax.console import start_jax

    start_jax()

    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.pretrained in ("True", "true"):
        if args.model is None:
            build_parser().error("--pretrained True needs --model (whose default weights)")
        args.pretrained = args.model
    if args.pretrained:
        loaded = rx.load(args.pretrained, args.model, **overrides)
        model, variables, carried = loaded.model, loaded.variables, loaded.transform
    elif args.model:
        print("note: no --pretrained given: the weights are random", file=sys.stderr)
        model = rx.create_model(args.model, **overrides)
        # Random weights are read as the model's default weight set reads its images.
        carried = (rx.get_pretrained_cfg(args.model).transform
                   if rx.list_pretrained(f"{args.model}.*") else None)
        variables = jax.jit(model.init)(
            jax.random.key(0), np.zeros((1, 224, 224, model.in_chans), np.float32))
    else:
        build_parser().error("give --pretrained WEIGHTS (a file, workdir, Hub id or weight-set "
                             "name), --model NAME, or both")
    pre = _transform(args, carried, model.in_chans)
    if args.layer not in layers_of(model):
        build_parser().error(f"--layer {args.layer}: this model has "
                             f"{', '.join(layers_of(model))}")
    labels = _label_names(args.labels, model.num_classes) if args.topk else []

    def show(name: str, index: np.ndarray, prob: np.ndarray) -> None:
        print(name + ": " + ", ".join(f"{labels[i]} ({p:.3f})" for i, p in zip(index, prob,
                                                                               strict=True)))

    files = list_images(args.inputs)
    odd = [f for f in files if not _utf8(str(f))]
    if odd:
        print(f"note: {len(odd)} file name(s) are not valid UTF-8 (e.g. {str(odd[0])!r}); "
              "they are recorded with the undecodable bytes escaped as \\udcXX",
              file=sys.stderr)
    settings = {"model": args.model, "pretrained": args.pretrained,
                "num_classes": model.num_classes}
    with tempfile.TemporaryDirectory() as tmp:  # top-k only: the results are not kept
        results = extract(model, variables, files, args.out or Path(tmp) / "topk.npz", pre,
                          layer=args.layer, k=args.topk, batch_size=args.batch_size,
                          workers=args.workers, settings=settings,
                          on_topk=show if args.topk else None,
                          progress=False if args.no_progress else None)
    for reason in results["skipped"].values():
        print(f"skipped {reason}", file=sys.stderr)
    shape = results["features"].shape
    print(f"{shape[0]} image(s), {args.layer} {shape[1:]}, {len(results['skipped'])} "
          f"skipped" + (f" -> {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    from resnext_jax.ops import reexec_with_huge_pages

    reexec_with_huge_pages()  # XLA:CPU's per-batch buffers on huge pages (docs/speed.md)
    sys.exit(main())
