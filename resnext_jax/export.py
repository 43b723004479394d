"""A model and its weights as a serialized StableHLO program, for serving without Python
model code: ``python -m resnext_jax.export WEIGHTS OUT_DIR``.

``export(pretrained, out_dir)`` writes ``model.stablehlo`` (``jax.export``, the weights
inside, a symbolic batch dimension: any batch size runs) and ``model.json`` (the model, the
input shape, and the transform its inputs need). The program uses XLA's own convolutions
(``lowering="xla"``): the other lowerings' custom gradients and conditionals have no business
in an inference graph. Read it back with :func:`load_exported` or
``jax.export.deserialize``.

``format="onnx"`` (``--format onnx``) writes ``model.onnx`` instead of ``model.stablehlo``:
the same outputs, a dynamic ``batch`` dimension, NHWC float32 ``images`` in, converted by
jax2onnx (optional; docs/user-guide.md "Serving and sharing" says how to install it) from
``lowering="portable"`` (XLA's convolutions; the max-pool as strided slices, which
onnxruntime runs).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnext_jax.console import start_jax
from resnext_jax.errors import OneLineParser, UsageError, positive_int, run_cli, verbose
from resnext_jax.files import atomic_write
from resnext_jax.weights import Pretrained, load

PROGRAM, SPEC, ONNX = "model.stablehlo", "model.json", "model.onnx"
OUTPUTS = ("logits", "pre_logits", "features")
FORMATS = ("stablehlo", "onnx")


def export(pretrained: Pretrained, out_dir: str | os.PathLike, *, output: str = "logits",
           image_size: int | None = None, format: str = "stablehlo") -> dict[str, Any]:
    """Write ``pretrained`` to ``out_dir`` (see the module docstring); ``output``: the
    ``logits``, the pooled ``pre_logits``, or all ``features`` (a dict of maps); ``format``:
    ``"stablehlo"`` or ``"onnx"``. Returns what ``model.json`` holds."""
    if output not in OUTPUTS:
        raise UsageError(f"output={output!r}: choose one of {OUTPUTS}")
    if format not in FORMATS:
        raise UsageError(f"format={format!r}: choose one of {FORMATS}")
    model = pretrained.model.clone(lowering="xla" if format == "stablehlo" else "portable")
    if output == "logits" and (model.num_classes == 0):
        raise UsageError("this model has no classifier head: export output='pre_logits'")
    if image_size is not None and image_size < 1:
        raise UsageError(f"image_size={image_size}: give a positive size")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"{out_dir} is a file; give a folder for the exported program")
    size = image_size or pretrained.transform.size
    variables = jax.tree_util.tree_map(jnp.asarray, pretrained.variables)

    def forward(images: jax.Array) -> Any:
        if output == "features":
            return model.apply(variables, images, method=model.forward_intermediates)
        if output == "pre_logits":
            last = model.apply(variables, images, method=model.forward_features)
            return model.apply(variables, last, pre_logits=True, method=model.forward_head)
        return model.apply(variables, images)

    spec = {"model": pretrained.cfg.name, "output": output,
            "input": {"shape": ["batch", size, size, model.in_chans], "dtype": "float32",
                      "layout": "NHWC"},
            "transform": pretrained.transform.to_dict()}
    if format == "onnx":
        program, extra = _onnx(forward, (size, size, model.in_chans), output)
        name = ONNX
    else:
        (batch,) = jax.export.symbolic_shape("batch")
        shape = jax.ShapeDtypeStruct((batch, size, size, model.in_chans), jnp.float32)
        exported = jax.export.export(jax.jit(forward))(shape)
        program, extra = bytes(exported.serialize()), {"platforms": list(exported.platforms)}
        name = PROGRAM
    spec.update(extra, jax=jax.__version__)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, name), program)
    atomic_write(os.path.join(out_dir, SPEC), json.dumps(spec, indent=2).encode())
    return spec


def _onnx(forward: Callable[[jax.Array], Any], image: tuple[int, int, int], output: str
          ) -> tuple[bytes, dict[str, Any]]:
    """``forward`` as a serialized ONNX model with a dynamic ``batch``, and its spec entries;
    the outputs are named ``output`` or, for features, by their keys."""
    try:
        with _quiet("jax2onnx", "onnx_ir"):  # its plugin scan logs every optional import
            import jax2onnx
    except ImportError:
        raise UsageError("ONNX export needs jax2onnx: pip install onnx onnx-ir onnxruntime && "
                         "pip install --no-deps jax2onnx==0.17.1 (its own requirements would "
                         "downgrade orbax-checkpoint)") from None
    example = jax.ShapeDtypeStruct((1, *image), jnp.float32)
    paths = jax.tree_util.tree_flatten_with_path(jax.eval_shape(forward, example))[0]
    names = [path[-1].key if path else output for path, _ in paths]
    with _quiet("jax2onnx", "onnx_ir"):
        proto = jax2onnx.to_onnx(forward, [("batch", *image)], model_name="resnext_jax",
                                 input_names=["images"], output_names=names)
    # jax2onnx 0.17.1 keeps NHWC shapes on values its layout pass made NCHW; onnxruntime warns
    # of each. The annotations are optional: drop them, the runtime infers its own.
    del proto.graph.value_info[:]
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), {"format": "onnx", "outputs": names, "opset": opset,
                                       "jax2onnx": importlib.metadata.version("jax2onnx")}


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """These libraries' log records below ERROR dropped for the block, unless
    ``RESNEXT_VERBOSE=1``: jax2onnx logs a traceback for every optional plugin whose own
    dependency (equinox, dm_pix ...) is absent, onnx_ir a warning per untyped value."""
    if verbose():
        yield
        return
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def load_exported(out_dir: str | os.PathLike) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """``(run, spec)`` of an export: ``run(images)`` calls the deserialized program."""
    with open(os.path.join(out_dir, PROGRAM), "rb") as stream:
        exported = jax.export.deserialize(bytearray(stream.read()))
    with open(os.path.join(out_dir, SPEC), encoding="utf-8") as stream:
        spec = json.load(stream)
    return lambda images: exported.call(np.asarray(images, np.float32)), spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m resnext_jax.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="anything resnext_jax.load reads")
    parser.add_argument("out_dir", help="folder for model.stablehlo (or .onnx) and model.json")
    parser.add_argument("--model", help="zoo name, when the weights do not say")
    parser.add_argument("--output", choices=OUTPUTS, default="logits")
    parser.add_argument("--image-size", type=positive_int, help="default: the weights' own")
    parser.add_argument("--format", choices=FORMATS, default="stablehlo",
                        help="onnx needs jax2onnx (docs/user-guide.md, \"Serving and sharing\")")
    args = parser.parse_args(argv)

    def run() -> int:
        start_jax()
        spec = export(load(args.weights, args.model), args.out_dir, output=args.output,
                      image_size=args.image_size, format=args.format)
        name = ONNX if args.format == "onnx" else PROGRAM
        print(f"resnext_jax.export: {spec['model']} -> {args.out_dir}/{name} "
              f"({spec['output']} of {spec['input']['shape']} NHWC float32, any batch)")
        return 0

    return run_cli("resnext_jax.export", run)


if __name__ == "__main__":
    sys.exit(main())
